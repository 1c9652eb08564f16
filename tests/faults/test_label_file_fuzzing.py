"""Property-based fuzzing of the label-file parsers (CSV, Label Studio JSON and JSON-MIN):
any bytes are either accepted with exactly the records they hold or refused whole with a
one-line message, and a refused file writes nothing."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from images import write_image

from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.label.batches import export_batch
from activeflow.core.label.label_import import import_labels
from activeflow.core.label.labelling import LabelFileError, parse_label_file
from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import LocalStore
from activeflow.settings import load_settings

CLASSES = ["cat", "dog", "bird"]
IDS = [f"{n:064x}" for n in range(1, 7)]
BATCH = IDS[:4]  # the last two are known to the store but in no batch

sample_ids = st.sampled_from(IDS)
labels = st.sampled_from(CLASSES)
texts = st.text(max_size=12)


def parse(content: bytes, name: str = "labels.csv"):
    return parse_label_file(name, content, batch_ids=set(BATCH), known_ids=set(IDS), classes=CLASSES)


def refused_in_one_line(content: bytes, name: str = "labels.csv") -> bool:
    """Parse; any failure must be a LabelFileError whose message is one line naming the
    file. True if refused, False if accepted (then every record is valid)."""
    try:
        parsed = parse(content, name)
    except LabelFileError as error:
        message = str(error)
        assert message.startswith(name) and "\n" not in message and "\r" not in message
        return True
    ids = [r.sample_id for r in parsed.records]
    assert len(ids) == len(set(ids))
    assert all(r.sample_id in BATCH and r.label in CLASSES for r in parsed.records)
    return False


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_accepted_validly_or_refused_in_one_line(content):
    refused_in_one_line(content)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts | sample_ids | labels,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["id", "data", "image", "annotations", "result", "value", "choices",
                         "label", "batch_id", "sample_id", "was_cancelled", "type"]) | texts,
        inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_any_json_document_is_accepted_validly_or_refused_in_one_line(value):
    refused_in_one_line(json.dumps(value).encode(), "export.json")


@given(st.integers(min_value=1, max_value=20_000))
@settings(max_examples=20, deadline=None)
def test_json_nested_any_depth_is_refused_in_one_line(depth):
    assert refused_in_one_line(("[" * depth + "]" * depth).encode(), "export.json")


@st.composite
def plain_csv(draw):
    """A valid ``id,label`` file and the records it holds (first mention of each id)."""
    rows = draw(st.lists(st.tuples(st.sampled_from(BATCH), labels), min_size=1, max_size=10))
    first: dict[str, str] = {}
    for sample_id, label in rows:
        first.setdefault(sample_id, label)
    rows = [(sid, first[sid]) for sid, _ in rows]  # repeats agree: a conflict is refused
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(["id", "label"])
    writer.writerows(rows)
    bom = draw(st.sampled_from(["", "\ufeff"]))
    return (bom + out.getvalue()).encode(), first


@settings(max_examples=200, deadline=None)
@given(plain_csv())
def test_a_valid_csv_gives_exactly_its_records(case):
    content, expected = case
    parsed = parse(content)
    assert {r.sample_id: r.label for r in parsed.records} == expected
    assert [r.sample_id for r in parsed.records] == list(expected)


@st.composite
def label_studio_json(draw):
    """A Label Studio JSON export with one annotation per task, and its records."""
    tasks, expected = [], {}
    for number, sample_id in enumerate(draw(st.lists(st.sampled_from(BATCH), min_size=1, max_size=4, unique=True))):
        label = draw(labels)
        expected[sample_id] = label
        tasks.append({
            "id": number + 1,
            "data": {"image": f"s3://bucket/samples/{sample_id[:2]}/{sample_id}.png", "sample_id": sample_id},
            "annotations": [{"id": number + 10, "was_cancelled": False, "result": [{
                "type": "choices", "from_name": "label", "to_name": "image",
                "value": {"choices": [label]}}]}],
        })
    return json.dumps(tasks).encode(), expected


@settings(max_examples=200, deadline=None)
@given(label_studio_json())
def test_a_valid_label_studio_export_gives_exactly_its_records(case):
    content, expected = case
    parsed = parse(content, "export.json")
    assert {r.sample_id: r.label for r in parsed.records} == expected


@st.composite
def damaged(draw, files):
    """A valid file with some bytes replaced, inserted or cut."""
    content, _ = draw(files)
    data = bytearray(content)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["replace", "insert", "cut"]))
        byte = draw(st.integers(0, 255))
        if action == "insert" or at == len(data):
            data.insert(at, byte)
        elif action == "replace":
            data[at] = byte
        else:
            del data[at : at + draw(st.integers(1, 8))]
    return bytes(data)


@settings(max_examples=400, deadline=None)
@given(damaged(plain_csv()))
def test_a_damaged_csv_is_accepted_validly_or_refused_in_one_line(content):
    refused_in_one_line(content)


@settings(max_examples=400, deadline=None)
@given(damaged(label_studio_json()))
def test_a_damaged_label_studio_export_is_accepted_validly_or_refused_in_one_line(content):
    refused_in_one_line(content, "export.json")


@pytest.fixture(scope="module")
def labelling_store(tmp_path_factory):
    """A store with one open batch of 4 samples (module-wide: a refused import changes
    nothing, which is what is checked)."""
    root = tmp_path_factory.mktemp("fuzz")
    for n in range(6):
        write_image(root / "in" / f"{n}.png", n)
    store = LocalStore(root / "store")
    ingest_images(store, iter_source(str(root / "in"), labelled=False))
    settings_ = load_settings(storage={"uri": store.uri}, data={"classes": CLASSES}, budget={"per_run": 4})
    batch_id = export_batch(store, settings_).batch_id
    return store, settings_, batch_id


def _snapshot(store: LocalStore) -> dict[str, int]:
    return {str(p.relative_to(store.root)): p.stat().st_mtime_ns for p in store.root.rglob("*") if p.is_file()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_refused_file_writes_nothing(labelling_store, data):
    store, settings_, batch_id = labelling_store
    ids = load_state(store).batches[batch_id].sample_ids
    valid = "id,label\n" + "".join(f"{sid},{CLASSES[i % 3]}\n" for i, sid in enumerate(ids))
    content = data.draw(st.binary(max_size=200) | damaged(st.just((valid.encode(), None))))
    before = _snapshot(store)
    try:
        import_labels(store, load_state(store), settings_, batch_id, "fuzz.csv", content)
    except LabelFileError as error:
        assert "\n" not in str(error)
        assert _snapshot(store) == before
    # An accepted file's records are checked by the parser properties above.
