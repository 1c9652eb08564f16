"""Labelling formats: what labellers get for a batch, and what they send back.

Plain Python and pydantic only (no Prefect, no TensorFlow, no store access): every
function here works on bytes and plain collections, so callers decide where the bytes
come from and where the results go.

Export side
    ``label_studio_tasks``  Label Studio tasks JSON with the model's guess as a prediction
                            (https://labelstud.io/guide/predictions, "Basic Label Studio
                            JSON format" with a ``predictions`` key).
    ``label_studio_config`` the matching labelling config: one ``Image``, one single
                            ``Choices`` control named ``label``.
    ``batch_csv``           the same batch as a CSV with image links, for teams without
                            Label Studio.

Import side
    ``parse_label_file`` reads what the labellers send back and refuses the whole file,
    with a ``LabelFileError`` naming file, record and problem, at the first thing wrong.
    Formats, told apart by content:

    * Label Studio JSON export (https://labelstud.io/guide/export#JSON and the task format
      page): a list of tasks, each ``{"id", "data": {...}, "annotations": [{"id",
      "result": [{"type": "choices", "value": {"choices": [...]}, ...}], "was_cancelled",
      ...}], "predictions", ...}``. Sample id from ``data.sample_id``.
    * Label Studio JSON-MIN export: one flat record per submitted (non-cancelled)
      annotation: the task's ``data`` fields, ``id`` (Label Studio's task number), the
      control's name as key (``"label": "cat"``; ``{"choices": [...]}`` when several were
      picked), ``annotator``, ``annotation_id``, ``created_at``, ``updated_at``,
      ``lead_time``. A task without annotations gives one record with no ``label`` key;
      a task whose annotations were all cancelled gives none. Sample id from
      ``sample_id``.
    * CSV: a header with ``label`` and a sample-id column, extra columns allowed. The
      sample id is read from ``sample_id`` when that column exists (Label Studio's own
      CSV export: data fields as columns, ``id`` is Label Studio's task number), else
      from ``id`` (``batch_csv`` with a ``label`` column added). A blank label leaves
      that sample unlabelled.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from pydantic import BaseModel, ConfigDict

# Names shared by the tasks JSON and the labelling config: the Image object tag reads
# ``data.image`` and is named "image"; the Choices control is named "label", which is
# also the key JSON-MIN and CSV exports use for its value.
IMAGE_TAG = "image"
CHOICES_TAG = "label"
CSV_HEADER = ("id", "image", "predicted", "score", "confidence", "source")


# --------------------------------------------------------------------------- export


class BatchItem(BaseModel):
    """One sample of a labelling batch, as labellers see it."""

    sample_id: str
    image_url: str
    predicted: str | None = None
    score: float | None = None  # the strategy's informativeness score
    confidence: float | None = None  # the model's top probability
    source: str = ""  # where the image came from before ingest: the name labellers know


def label_studio_tasks(
    items: Sequence[BatchItem], *, batch_id: str, model_version: str | None
) -> bytes:
    """Label Studio tasks JSON (a list), one task per item, with the model's guess as a
    prediction that Label Studio shows as a pre-annotation. Items without a guess get no
    ``predictions`` key."""
    tasks = []
    for item in items:
        task: dict[str, Any] = {
            "data": {IMAGE_TAG: item.image_url, "sample_id": item.sample_id, "batch_id": batch_id,
                     "source": item.source}
        }
        if item.predicted is not None:
            prediction: dict[str, Any] = {}
            if model_version is not None:
                prediction["model_version"] = model_version
            if item.confidence is not None:
                prediction["score"] = item.confidence
            prediction["result"] = [
                {
                    "from_name": CHOICES_TAG,
                    "to_name": IMAGE_TAG,
                    "type": "choices",
                    "value": {"choices": [item.predicted]},
                }
            ]
            task["predictions"] = [prediction]
        tasks.append(task)
    return json.dumps(tasks, indent=2, ensure_ascii=False).encode("utf-8")


def label_studio_config(classes: Sequence[str]) -> str:
    """The labelling config for ``label_studio_tasks``: one image, one single choice among
    ``classes`` (in the given order; names XML-escaped)."""
    if not classes:
        raise ValueError("classes must name at least one class")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes must be unique, got {list(classes)}")
    choices = "".join(f'    <Choice value="{_xml_attr(name)}"/>\n' for name in classes)
    return (
        "<View>\n"
        f'  <Image name="{IMAGE_TAG}" value="${IMAGE_TAG}"/>\n'
        f'  <Choices name="{CHOICES_TAG}" toName="{IMAGE_TAG}" choice="single" showInline="true">\n'
        f"{choices}"
        "  </Choices>\n"
        "</View>\n"
    )


def _xml_attr(value: str) -> str:
    """``value`` escaped for a double-quoted XML attribute."""
    return escape(value, {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def batch_csv(items: Sequence[BatchItem]) -> bytes:
    """The batch as CSV (UTF-8) with header ``id,image,predicted,score,confidence,source``;
    empty cells for missing values. Labellers add a ``label`` column and send it back."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for item in items:
        writer.writerow(
            [
                item.sample_id,
                item.image_url,
                "" if item.predicted is None else item.predicted,
                "" if item.score is None else repr(item.score),
                "" if item.confidence is None else repr(item.confidence),
                item.source,
            ]
        )
    return out.getvalue().encode("utf-8")


# --------------------------------------------------------------------------- import


class LabelRecord(BaseModel):
    """One imported label."""

    model_config = ConfigDict(frozen=True)

    sample_id: str
    label: str


class Disagreement(BaseModel):
    """A sample whose annotations did not reach the minimum agreement (or tied)."""

    sample_id: str
    votes: dict[str, int]


class ParsedLabels(BaseModel):
    """What a label file says: labels resolved by vote (one per sample, in file order),
    the samples it mentions without any annotation, those whose annotations were all
    cancelled/skipped, and those whose annotators disagreed."""

    records: list[LabelRecord]
    unlabelled: list[str]
    skipped: list[str] = []
    disagreements: list[Disagreement] = []


class LabelFileError(ValueError):
    """A label file refused whole; names the file, the record (``"task 3"``,
    ``"item 2"``, ``"line 4"`` or None for the file as a whole) and the problem."""

    def __init__(self, file: str, record: str | None, problem: str) -> None:
        self.file = file
        self.record = record
        self.problem = problem
        where = file if record is None else f"{file}, {record}"
        super().__init__(f"{where}: {problem}")


_Fail = Callable[[str | None, str], LabelFileError]  # (record, problem) -> error to raise


@dataclass(frozen=True)
class _Entry:
    """One sample mention read from a file, before checks against the batch."""

    record: str  # "task 3", "item 2", "line 4"
    sample_id: str
    votes: tuple[str, ...]  # labels of the non-cancelled annotations in this mention
    cancelled: int = 0  # cancelled / skipped annotations in this mention
    image: str | None = None  # the image reference the labellers saw, if the file has it
    batch_id: str | None = None  # the batch the task was exported in, if the file has it
    annotated: bool = True  # False for a plain CSV row: a repeat is a conflict, not a vote


def parse_label_file(
    file_name: str,
    content: bytes,
    *,
    batch_ids: Collection[str],
    known_ids: Collection[str],
    classes: Sequence[str],
    batch_id: str | None = None,
    min_agreement: float = 0.5,
) -> ParsedLabels:
    """Read a Label Studio JSON / JSON-MIN / CSV export or a plain CSV ``id,label``.

    Several annotations of one sample are votes: the most common label wins when its
    share is at least ``min_agreement`` and no other label ties it; otherwise the sample
    is listed in ``disagreements`` and stays unlabelled.

    Raises ``LabelFileError`` for the whole file on: empty content, undecodable or
    malformed content, a missing or non-string sample id, an id not in ``known_ids``
    ("unknown sample id"), a known id not in ``batch_ids`` ("not in this batch"), a task
    exported for another batch than ``batch_id``, an image reference that does not name
    the sample id, a label not in ``classes``, and one id given two different labels in
    a plain CSV ("conflicting labels").
    """

    def fail(record: str | None, problem: str) -> LabelFileError:
        return LabelFileError(file_name, record, problem)

    try:
        text = content.decode("utf-8-sig")  # tolerate the BOM spreadsheet programs write
    except UnicodeDecodeError as exc:
        raise fail(None, f"not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise fail(None, "file is empty")

    if text.lstrip()[:1] in ("[", "{"):
        entries = list(_json_entries(text, fail))
    else:
        entries = list(_csv_entries(text, fail))
    for entry in entries:
        _check_entry(entry, batch_ids, known_ids, classes, batch_id, fail)
    return _resolve(entries, min_agreement, fail)


def _check_entry(
    entry: _Entry,
    batch_ids: Collection[str],
    known_ids: Collection[str],
    classes: Sequence[str],
    batch_id: str | None,
    fail: _Fail,
) -> None:
    if entry.sample_id not in known_ids:
        raise fail(entry.record, f"unknown sample id {entry.sample_id!r}")
    if batch_id is not None and entry.batch_id not in (None, batch_id):
        raise fail(entry.record, f"task was exported for batch {entry.batch_id!r}, not {batch_id!r}")
    if entry.sample_id not in batch_ids:
        raise fail(entry.record, f"sample id {entry.sample_id!r} is not in this batch")
    if entry.image is not None and entry.sample_id not in entry.image:
        raise fail(
            entry.record,
            f"image reference {entry.image!r} does not match sample id {entry.sample_id!r}",
        )
    for label in entry.votes:
        if label not in classes:
            raise fail(
                entry.record, f"class {label!r} is not one of the configured classes {list(classes)}"
            )


def _resolve(entries: list[_Entry], min_agreement: float, fail: _Fail) -> ParsedLabels:
    by_sample: dict[str, list[_Entry]] = {}  # file order of first mention
    for entry in entries:
        by_sample.setdefault(entry.sample_id, []).append(entry)
    result = ParsedLabels(records=[], unlabelled=[])
    for sample_id, mentions in by_sample.items():
        _refuse_plain_conflicts(sample_id, mentions, fail)
        votes = Counter(label for m in mentions for label in m.votes)
        if not votes:
            cancelled = any(m.cancelled for m in mentions)
            (result.skipped if cancelled else result.unlabelled).append(sample_id)
            continue
        ranked = votes.most_common()
        label, count = ranked[0]
        tied = len(ranked) > 1 and ranked[1][1] == count
        if tied or count / sum(votes.values()) < min_agreement:
            result.disagreements.append(Disagreement(sample_id=sample_id, votes=dict(votes)))
        else:
            result.records.append(LabelRecord(sample_id=sample_id, label=label))
    return result


def _refuse_plain_conflicts(sample_id: str, mentions: list[_Entry], fail: _Fail) -> None:
    """A plain CSV names one label per row: the same id twice with two labels is an error,
    not two annotators."""
    plain = [m for m in mentions if not m.annotated and m.votes]
    for later in plain[1:]:
        if later.votes != plain[0].votes:
            raise fail(
                later.record,
                f"conflicting labels for sample id {sample_id!r}: "
                f"{plain[0].votes[0]!r} ({plain[0].record}) vs {later.votes[0]!r} ({later.record})",
            )


# --- JSON and JSON-MIN


def _json_entries(text: str, fail: _Fail) -> Iterator[_Entry]:
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise fail(None, f"malformed JSON: {exc.msg} ({where})") from None
    except RecursionError:
        raise fail(None, "JSON nested too deeply to be a label export") from None
    if not isinstance(tasks, list):
        raise fail(None, f"expected a JSON list of tasks, got {_json_kind(tasks)}")
    if not tasks:
        raise fail(None, "JSON list has no tasks")
    first = tasks[0]
    full_export = isinstance(first, dict) and ("data" in first or "annotations" in first)
    for number, task in enumerate(tasks, start=1):
        if full_export:
            yield _task_entry(f"task {number}", task, fail)
        else:
            yield _min_entry(f"item {number}", task, fail)


def _task_entry(record: str, task: Any, fail: _Fail) -> _Entry:
    """One task of a Label Studio JSON export."""
    if not isinstance(task, dict):
        raise fail(record, f"expected a task object, got {_json_kind(task)}")
    data = task.get("data")
    if not isinstance(data, dict):
        raise fail(record, "task has no 'data' object")
    sample_id = _sample_id(record, data.get("sample_id"), "data.sample_id", fail)
    annotations = task.get("annotations", [])
    if not isinstance(annotations, list):
        raise fail(record, "'annotations' is not a list")

    votes: list[str] = []
    cancelled = 0
    for position, annotation in enumerate(annotations, start=1):
        if not isinstance(annotation, dict):
            raise fail(record, f"annotation {position} is not an object")
        name = f"annotation {annotation.get('id', f'#{position}')}"
        if annotation.get("was_cancelled") or annotation.get("skipped"):
            cancelled += 1  # cancelled ("skipped") by the labeller: no vote
            continue
        result = annotation.get("result", [])
        if not isinstance(result, list):
            raise fail(record, f"{name}: 'result' is not a list")
        labels: list[str] = []
        for region in result:
            if not isinstance(region, dict):
                raise fail(record, f"{name}: result entry is not an object")
            if region.get("type") != "choices":
                continue
            value = region.get("value")
            choices = value.get("choices") if isinstance(value, dict) else None
            if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                raise fail(record, f"{name}: choices result has no list of choices in 'value'")
            labels.extend(choices)
        if len(set(labels)) > 1:
            raise fail(record, f"{name} picks several classes {labels}; one is expected")
        if labels:
            votes.append(labels[0])
    return _Entry(
        record, sample_id, tuple(votes), cancelled,
        image=_optional_str(data.get(IMAGE_TAG)), batch_id=_optional_str(data.get("batch_id")),
    )


def _min_entry(record: str, item: Any, fail: _Fail) -> _Entry:
    """One record of a Label Studio JSON-MIN export."""
    if not isinstance(item, dict):
        raise fail(record, f"expected an object, got {_json_kind(item)}")
    sample_id = _sample_id(record, item.get("sample_id"), "sample_id", fail)
    value = item.get(CHOICES_TAG)
    image, batch = _optional_str(item.get(IMAGE_TAG)), _optional_str(item.get("batch_id"))
    if value is None:
        return _Entry(record, sample_id, (), image=image, batch_id=batch)
    if isinstance(value, str):
        label = value
    elif isinstance(value, dict) and isinstance(value.get("choices"), list):
        # JSON-MIN writes {"choices": [...]} when not exactly one choice was picked
        choices = value["choices"]
        if len(choices) != 1 or not isinstance(choices[0], str):
            raise fail(record, f"'{CHOICES_TAG}' picks {choices}; one class is expected")
        label = choices[0]
    else:
        raise fail(record, f"'{CHOICES_TAG}' is not a class name: {value!r}")
    votes = (label,) if label.strip() else ()
    return _Entry(record, sample_id, votes, image=image, batch_id=batch)


def _sample_id(record: str, value: Any, where: str, fail: _Fail) -> str:
    if value is None:
        raise fail(record, f"missing sample id ({where})")
    if not isinstance(value, str) or not value.strip():
        raise fail(record, f"sample id ({where}) must be a non-empty string, got {_json_kind(value)}")
    return value


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


# --- CSV


def _csv_entries(text: str, fail: _Fail) -> Iterator[_Entry]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
        columns = [name.strip() for name in header]
        id_column = "sample_id" if "sample_id" in columns else "id"
        if id_column not in columns or CHOICES_TAG not in columns:
            # Never echo the line itself: the file may be anything (a refusal is logged).
            raise fail(
                "line 1",
                f"CSV header needs an 'id' (or 'sample_id') and a '{CHOICES_TAG}' column "
                f"(the first line has {len(columns)} column{'s' if len(columns) != 1 else ''})",
            )
        for name in (id_column, CHOICES_TAG):
            if columns.count(name) > 1:
                raise fail("line 1", f"CSV header names column {name!r} twice")
        id_at, label_at = columns.index(id_column), columns.index(CHOICES_TAG)
        optional = {name: columns.index(name) for name in (IMAGE_TAG, "batch_id") if name in columns}
        # Label Studio's CSV export has a row per annotation: repeats are votes there.
        annotated = "annotation_id" in columns or "annotator" in columns

        rows = 0
        last_line = reader.line_num
        for row in reader:
            record = f"line {last_line + 1}"  # where this row starts
            last_line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue  # blank line
            if len(row) != len(columns):
                raise fail(record, f"row has {len(row)} fields, the header has {len(columns)}")
            rows += 1
            sample_id = row[id_at].strip()
            if not sample_id:
                raise fail(record, f"missing sample id (column {id_column!r})")
            label = row[label_at].strip()
            extra = {name: row[at].strip() or None for name, at in optional.items()}
            yield _Entry(
                record, sample_id, (label,) if label else (), image=extra.get(IMAGE_TAG),
                batch_id=extra.get("batch_id"), annotated=annotated,
            )
    except csv.Error as exc:
        raise fail(f"line {reader.line_num}", f"malformed CSV: {exc}") from None
    if rows == 0:
        raise fail(None, "CSV has a header but no rows")
