"""Labelling formats: batch export and label-file import.

Fixtures are shaped the way Label Studio writes them (see
https://labelstud.io/guide/task_format, https://labelstud.io/guide/export and the
label-studio-sdk converter that produces JSON-MIN and CSV exports).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from activeflow.core.label.labelling import (
    BatchItem,
    Disagreement,
    LabelFileError,
    LabelRecord,
    ParsedLabels,
    batch_csv,
    label_studio_config,
    label_studio_tasks,
    parse_label_file,
)

CLASSES = ["cat", "dog", "bird"]
A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)  # sample ids are sha256 hex digests
OUTSIDER = "e" * 64  # known to the store, but in an earlier batch
BATCH = {A, B, C, D}
KNOWN = BATCH | {OUTSIDER}


def parse(name: str, content: bytes, **overrides) -> ParsedLabels:
    kwargs = {"batch_ids": BATCH, "known_ids": KNOWN, "classes": CLASSES} | overrides
    return parse_label_file(name, content, **kwargs)


def dump(value) -> bytes:
    return json.dumps(value, indent=2).encode("utf-8")


# ------------------------------------------------------------ Label Studio fixtures


def choices_result(label: str, region_id: str = "Xk3_9sQmLt") -> dict:
    """One result entry as Label Studio stores it for a <Choices> control."""
    return {
        "id": region_id,
        "type": "choices",
        "value": {"choices": [label]},
        "origin": "manual",
        "to_name": "image",
        "from_name": "label",
    }


def annotation(
    annotation_id: int, task_id: int, result: list, *, cancelled: bool = False, user: int = 1
) -> dict:
    return {
        "id": annotation_id,
        "completed_by": user,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": "2024-05-02T10:15:03.123456Z",
        "updated_at": "2024-05-02T10:15:03.123456Z",
        "draft_created_at": None,
        "lead_time": 4.2,
        "prediction": {},
        "result_count": 0,
        "unique_id": f"0f1e2d3c-{annotation_id:04d}",
        "import_id": None,
        "last_action": None,
        "task": task_id,
        "project": 7,
        "updated_by": user,
        "parent_prediction": None,
        "parent_annotation": None,
        "last_created_by": None,
    }


def task(task_id: int, sample_id: str, annotations: list) -> dict:
    """One task of a Label Studio JSON export of a project fed by label_studio_tasks."""
    return {
        "id": task_id,
        "annotations": annotations,
        "file_upload": "3e1f0a2b-tasks.json",
        "drafts": [],
        "predictions": [
            {
                "id": 40 + task_id,
                "model_version": "v1",
                "created_ago": "1 hour",
                "score": 0.61,
                "result": [choices_result("cat", "pred")],
                "task": task_id,
            }
        ],
        "data": {
            "image": f"s3://bucket/store/samples/{sample_id[:2]}/{sample_id}.png",
            "sample_id": sample_id,
            "batch_id": "batch-0001",
        },
        "meta": {},
        "created_at": "2024-05-02T09:00:00.000000Z",
        "updated_at": "2024-05-02T10:15:03.200000Z",
        "inner_id": task_id,
        "total_annotations": sum(not a["was_cancelled"] for a in annotations),
        "cancelled_annotations": sum(a["was_cancelled"] for a in annotations),
        "total_predictions": 1,
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "project": 7,
        "updated_by": 1,
        "comment_authors": [],
    }


def json_export() -> list[dict]:
    """A: labelled cat; B: two annotators agree on dog; C: cancelled (skipped);
    D: no annotation yet."""
    return [
        task(11, A, [annotation(101, 11, [choices_result("cat")])]),
        task(
            12,
            B,
            [
                annotation(102, 12, [choices_result("dog")], user=1),
                annotation(103, 12, [choices_result("dog", "Qw8_zzP1aa")], user=2),
            ],
        ),
        task(13, C, [annotation(104, 13, [], cancelled=True)]),
        task(14, D, []),
    ]


def min_record(task_id: int, sample_id: str, label=None, *, annotation_id=None) -> dict:
    """One record of a Label Studio JSON-MIN export: task data flattened, task id, the
    control's value under its name, annotation metadata."""
    record = {
        "image": f"s3://bucket/store/samples/{sample_id[:2]}/{sample_id}.png",
        "sample_id": sample_id,
        "batch_id": "batch-0001",
        "id": task_id,
    }
    if label is not None:
        record["label"] = label
    record |= {
        "annotator": 1 if annotation_id else None,  # from completed_by; none without annotation
        "annotation_id": annotation_id,
        "created_at": "2024-05-02T10:15:03.123456Z" if annotation_id else None,
        "updated_at": "2024-05-02T10:15:03.123456Z" if annotation_id else None,
        "lead_time": 4.2 if annotation_id else None,
    }
    return record


def json_min_export() -> list[dict]:
    """Same project as json_export(): one record per submitted annotation, none for the
    task whose only annotation was cancelled, a bare record for the unannotated task."""
    return [
        min_record(11, A, "cat", annotation_id=101),
        min_record(12, B, "dog", annotation_id=103),
        min_record(12, B, "dog", annotation_id=102),
        min_record(14, D),
    ]


def label_studio_csv_export() -> bytes:
    """Same project as Label Studio's CSV export writes it: sorted columns, non-numeric
    values quoted, ``id`` is Label Studio's task number, data fields as columns."""
    keys = sorted(
        {"annotator", "annotation_id", "created_at", "updated_at", "lead_time", "id"}
        | {"image", "sample_id", "batch_id", "label"}
    )
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, quoting=csv.QUOTE_NONNUMERIC)
    writer.writeheader()
    for record in json_min_export():
        writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
    return out.getvalue().encode("utf-8")


# -------------------------------------------------------------------------- export


ITEMS = [
    BatchItem(
        sample_id=A, image_url=f"https://img/{A}.png", predicted="cat", score=0.9, confidence=0.4
    ),
    BatchItem(
        sample_id=B, image_url=f"https://img/{B}.png", predicted=None, score=0.7, confidence=None
    ),
]


def test_label_studio_tasks_follow_the_task_import_format():
    tasks = json.loads(label_studio_tasks(ITEMS, batch_id="batch-0001", model_version="v3"))

    assert tasks == [
        {
            "data": {"image": f"https://img/{A}.png", "sample_id": A, "batch_id": "batch-0001", "source": ""},
            "predictions": [
                {
                    "model_version": "v3",
                    "score": 0.4,
                    "result": [
                        {
                            "from_name": "label",
                            "to_name": "image",
                            "type": "choices",
                            "value": {"choices": ["cat"]},
                        }
                    ],
                }
            ],
        },
        {"data": {"image": f"https://img/{B}.png", "sample_id": B, "batch_id": "batch-0001", "source": ""}},
    ]


def test_label_studio_tasks_leave_out_unknown_model_version_and_confidence():
    item = BatchItem(sample_id=A, image_url="u", predicted="dog", score=None, confidence=None)
    (only,) = json.loads(label_studio_tasks([item], batch_id="b", model_version=None))
    assert only["predictions"] == [
        {
            "result": [
                {
                    "from_name": "label",
                    "to_name": "image",
                    "type": "choices",
                    "value": {"choices": ["dog"]},
                }
            ]
        }
    ]


def test_label_studio_tasks_of_an_empty_batch_is_an_empty_list():
    assert json.loads(label_studio_tasks([], batch_id="b", model_version="v1")) == []


def test_prediction_names_match_the_labelling_config():
    config = ET.fromstring(label_studio_config(CLASSES))
    (image,) = config.iter("Image")
    (choices,) = config.iter("Choices")
    (task_,) = json.loads(label_studio_tasks(ITEMS[:1], batch_id="b", model_version="v"))
    (result,) = task_["predictions"][0]["result"]

    assert image.get("value") == "$image" and image.get("value")[1:] in task_["data"]
    assert result["from_name"] == choices.get("name") == "label"
    assert result["to_name"] == choices.get("toName") == image.get("name") == "image"
    assert choices.get("choice") == "single" and choices.get("showInline") == "true"


def test_config_lists_all_classes_in_order_and_escapes_names():
    names = ["cat", 'say "hi"', "<b>&co</b>", "it's", "tab\there"]
    text = label_studio_config(names)

    assert "<b>" not in text and "&lt;b&gt;&amp;co&lt;/b&gt;" in text
    assert "&quot;hi&quot;" in text
    root = ET.fromstring(text)
    assert root.tag == "View"
    assert [c.get("value") for c in root.iter("Choice")] == names


@pytest.mark.parametrize("classes", [[], ["cat", "cat"]])
def test_config_refuses_no_or_repeated_classes(classes):
    with pytest.raises(ValueError, match="classes must"):
        label_studio_config(classes)


def test_batch_csv_header_is_exact_and_rows_round_trip():
    content = batch_csv(ITEMS)

    assert content.decode("utf-8").splitlines()[0] == "id,image,predicted,score,confidence,source"
    rows = list(csv.reader(io.StringIO(content.decode("utf-8"))))
    assert rows[1] == [A, f"https://img/{A}.png", "cat", "0.9", "0.4", ""]
    assert rows[2] == [B, f"https://img/{B}.png", "", "0.7", "", ""]
    assert len(rows) == 3


def test_batch_csv_quotes_commas_and_keeps_unicode():
    item = BatchItem(sample_id=A, image_url=f"https://img/{A},b.png", predicted="chat noir é")
    content = batch_csv([item])
    (row,) = list(csv.DictReader(io.StringIO(content.decode("utf-8"))))
    assert row == {
        "id": A,
        "image": f"https://img/{A},b.png",
        "predicted": "chat noir é",
        "score": "",
        "confidence": "",
        "source": "",
    }


# ---------------------------------------------------------------- import: formats


EXPECTED = ParsedLabels(
    records=[LabelRecord(sample_id=A, label="cat"), LabelRecord(sample_id=B, label="dog")],
    unlabelled=[D],
    skipped=[C],  # its only annotation was cancelled
)


def test_json_export_gives_labels_and_unlabelled_samples():
    assert parse("project-7.json", dump(json_export())) == EXPECTED


def test_json_min_export_gives_labels_and_unlabelled_samples():
    # JSON-MIN leaves out the task whose only annotation was cancelled, so C is absent
    assert parse("project-7-min.json", dump(json_min_export())) == ParsedLabels(
        records=EXPECTED.records, unlabelled=[D]
    )


def test_label_studio_csv_export_reads_sample_id_not_task_number():
    content = label_studio_csv_export()
    assert content.startswith(b'"annotation_id","annotator","batch_id"')
    assert parse("project-7.csv", content) == ParsedLabels(
        records=EXPECTED.records, unlabelled=[D]
    )


def test_returned_batch_csv_with_label_column():
    content = (
        "id,image,predicted,score,label\n"
        f"{A},https://img/{A}.png,dog,0.9,cat\n"
        f"{B},https://img/{B}.png,,0.7, dog \n"
        f"{C},https://img/{C}.png,cat,0.5,\n"
        "\n"
    ).encode()
    assert parse("batch.csv", content) == ParsedLabels(
        records=[LabelRecord(sample_id=A, label="cat"), LabelRecord(sample_id=B, label="dog")],
        unlabelled=[C],
    )


def test_csv_with_only_id_and_label_columns_and_windows_conventions():
    content = ("\ufeffid,label\r\n" f"{A},bird\r\n").encode("utf-8")
    assert parse("labels.csv", content).records == [LabelRecord(sample_id=A, label="bird")]


def test_round_trip_export_annotate_parse():
    items = [
        BatchItem(
            sample_id=s,
            image_url=f"https://img/{s}.png",
            predicted="cat",
            score=0.5,
            confidence=0.6,
        )
        for s in (A, B, C)
    ]
    tasks = json.loads(label_studio_tasks(items, batch_id="batch-0001", model_version="v1"))

    # Label Studio: import, annotate (A accepted as predicted, B corrected, C skipped), export
    truth = {A: "cat", B: "bird"}
    exported = []
    for number, imported in enumerate(tasks, start=1):
        sample_id = imported["data"]["sample_id"]
        prediction = imported["predictions"][0]
        result = copy.deepcopy(prediction["result"])
        if sample_id in truth:
            result[0]["value"]["choices"] = [truth[sample_id]]
            result[0] |= {"id": f"r{number}", "origin": "prediction-changed"}
            annotations = [annotation(200 + number, number, result)]
        else:
            annotations = [annotation(200 + number, number, [], cancelled=True)]
        exported.append(task(number, sample_id, annotations) | {"data": imported["data"]})

    parsed = parse("export.json", dump(exported))

    assert parsed.records == [LabelRecord(sample_id=s, label=l) for s, l in truth.items()]
    assert parsed.skipped == [C]


# ------------------------------------------------ import: unlabelled, dedup, agreement


def test_task_with_only_empty_results_or_cancellations_is_unlabelled():
    export = [
        task(11, A, [annotation(101, 11, [])]),  # submitted without choosing
        task(12, B, [annotation(102, 12, [choices_result("dog")], cancelled=True)]),
    ]
    assert parse("e.json", dump(export)) == ParsedLabels(records=[], unlabelled=[A], skipped=[B])


def test_cancelled_annotation_does_not_count_against_the_others():
    export = [
        task(
            11,
            A,
            [
                annotation(101, 11, [choices_result("bird")], cancelled=True),
                annotation(102, 11, [choices_result("cat")]),
                annotation(103, 11, []),  # empty result casts no vote
            ],
        )
    ]
    assert parse("e.json", dump(export)).records == [LabelRecord(sample_id=A, label="cat")]


def test_cancelled_annotation_with_unknown_class_is_ignored():
    export = [task(11, A, [annotation(101, 11, [choices_result("horse")], cancelled=True)])]
    assert parse("e.json", dump(export)).skipped == [A]


def test_same_id_twice_with_same_label_is_kept_once_in_file_order():
    content = f"id,label\n{B},dog\n{A},cat\n{B},dog\n{A},cat\n".encode()
    assert parse("dup.csv", content).records == [
        LabelRecord(sample_id=B, label="dog"),
        LabelRecord(sample_id=A, label="cat"),
    ]


def test_id_labelled_in_one_place_and_blank_in_another_is_labelled():
    content = f"id,label\n{A},\n{A},cat\n{B},\n{B},\n".encode()
    parsed = parse("mix.csv", content)
    assert parsed.records == [LabelRecord(sample_id=A, label="cat")]
    assert parsed.unlabelled == [B]


def test_label_record_is_frozen():
    record = LabelRecord(sample_id=A, label="cat")
    with pytest.raises(Exception, match="frozen"):
        record.label = "dog"


# ----------------------------------------------------------------- import: refusals


def refused(name: str, content: bytes, match: str, **overrides) -> LabelFileError:
    with pytest.raises(LabelFileError, match=match) as info:
        parse(name, content, **overrides)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.file == name
    assert str(error).startswith(name)
    assert error.problem in str(error)
    return error


@pytest.mark.parametrize("content", [b"", b"  \n\t\n", b"\xef\xbb\xbf"])
def test_refuses_empty_file(content):
    error = refused("labels.json", content, r"^labels\.json: file is empty$")
    assert error.record is None


def test_refuses_bytes_that_are_not_utf8():
    error = refused("labels.csv", b"id,label\n\xff\xfe,cat\n", "not UTF-8")
    assert error.record is None


def test_refuses_malformed_json():
    content = dump(json_export())[:-5]
    error = refused("export.json", content, r"^export\.json: malformed JSON: .*line \d+")
    assert error.record is None


def test_refuses_json_that_is_not_a_list():
    error = refused("x.json", dump({"data": {}}), "expected a JSON list of tasks, got an object")
    assert error.record is None


def test_refuses_json_list_without_tasks():
    refused("x.json", b"[]", r"^x\.json: JSON list has no tasks$")


def test_refuses_task_without_data():
    export = json_export()
    del export[2]["data"]
    error = refused(
        "export.json", dump(export), r"^export\.json, task 3: task has no 'data' object$"
    )
    assert error.record == "task 3"
    assert error.problem == "task has no 'data' object"


def test_refuses_task_without_sample_id():
    export = json_export()
    del export[1]["data"]["sample_id"]
    error = refused("export.json", dump(export), r"task 2: missing sample id \(data\.sample_id\)")
    assert error.record == "task 2"


def test_refuses_non_string_sample_id():
    export = json_export()
    export[0]["data"]["sample_id"] = 12
    refused("export.json", dump(export), r"task 1: sample id .* must be a non-empty string, got a number")


def test_refuses_non_object_in_task_list():
    export = json_export() + ["oops"]
    error = refused("export.json", dump(export), "expected a task object, got a string")
    assert error.record == "task 5"


def test_refuses_unknown_sample_id():
    export = json_export()
    export[3]["data"]["sample_id"] = "f" * 64
    error = refused("export.json", dump(export), rf"task 4: unknown sample id '{'f' * 64}'")
    assert error.record == "task 4"


def test_refuses_known_id_from_another_batch():
    export = json_export()
    export[0]["data"]["sample_id"] = OUTSIDER
    error = refused(
        "export.json", dump(export), rf"task 1: sample id '{OUTSIDER}' is not in this batch"
    )
    assert error.record == "task 1"


def test_refuses_unknown_class_naming_the_configured_ones():
    export = json_export()
    export[2]["annotations"][0] = annotation(104, 13, [choices_result("horse")])
    error = refused(
        "labels.json",
        dump(export),
        re.escape(
            "labels.json, task 3: class 'horse' is not one of the configured classes "
            "['cat', 'dog', 'bird']"
        ),
    )
    assert error.record == "task 3"


def test_annotations_that_disagree_stay_unlabelled_and_are_reported():
    export = json_export()
    export[1]["annotations"][1]["result"] = [choices_result("bird")]  # B: dog vs bird
    parsed = parse("export.json", dump(export))
    assert parsed.records == [LabelRecord(sample_id=A, label="cat")]
    assert parsed.disagreements == [Disagreement(sample_id=B, votes={"dog": 1, "bird": 1})]


def test_majority_vote_with_minimum_agreement():
    export = json_export()
    export[1]["annotations"].append(annotation(104, 12, [choices_result("bird")]))  # dog, dog, bird
    assert parse("export.json", dump(export)).records[1] == LabelRecord(sample_id=B, label="dog")
    strict = parse("export.json", dump(export), min_agreement=0.7)  # 2 of 3 is below 0.7
    assert [r.sample_id for r in strict.records] == [A]
    assert strict.disagreements == [Disagreement(sample_id=B, votes={"dog": 2, "bird": 1})]


def test_refuses_a_task_exported_for_another_batch():
    export = json_export()
    export[1]["data"]["batch_id"] = "batch-0002"
    refused(
        "export.json", dump(export),
        re.escape("task 2: task was exported for batch 'batch-0002', not 'batch-0001'"),
        batch_id="batch-0001",
    )


def test_refuses_an_image_reference_that_does_not_match_the_id():
    export = json_export()
    export[0]["data"]["image"] = f"https://img/{B}.png"
    refused(
        "export.json", dump(export),
        re.escape(f"task 1: image reference 'https://img/{B}.png' does not match sample id '{A}'"),
    )


def test_refuses_annotation_with_several_classes():
    export = json_export()
    export[0]["annotations"][0]["result"][0]["value"]["choices"] = ["cat", "dog"]
    refused(
        "export.json",
        dump(export),
        re.escape("task 1: annotation 101 picks several classes ['cat', 'dog']"),
    )


def test_refuses_choices_result_without_choices():
    export = json_export()
    export[0]["annotations"][0]["result"][0]["value"] = {"text": ["cat"]}
    refused(
        "export.json",
        dump(export),
        "task 1: annotation 101: choices result has no list of choices",
    )


def test_same_task_twice_counts_both_annotations_as_votes():
    export = json_export()
    export.append(task(15, A, [annotation(105, 15, [choices_result("dog")])]))
    parsed = parse("export.json", dump(export))
    assert parsed.disagreements == [Disagreement(sample_id=A, votes={"cat": 1, "dog": 1})]


def test_json_min_annotators_that_disagree_are_reported():
    export = json_min_export()
    export[2]["label"] = "bird"
    parsed = parse("min.json", dump(export))
    assert parsed.disagreements == [Disagreement(sample_id=B, votes={"dog": 1, "bird": 1})]
    assert parsed.records == [LabelRecord(sample_id=A, label="cat")]


def test_refuses_json_min_record_without_sample_id():
    export = json_min_export()
    del export[0]["sample_id"]
    error = refused("min.json", dump(export), r"item 1: missing sample id \(sample_id\)")
    assert error.record == "item 1"


def test_refuses_json_min_record_with_several_choices():
    export = json_min_export()
    export[0]["label"] = {"choices": ["cat", "dog"]}  # how JSON-MIN writes a multi-choice
    refused("min.json", dump(export), re.escape("item 1: 'label' picks ['cat', 'dog']; one class"))


def test_json_min_single_choice_object_is_read():
    export = json_min_export()
    export[0]["label"] = {"choices": ["cat"]}
    assert parse("min.json", dump(export)).records[0] == LabelRecord(sample_id=A, label="cat")


def test_refuses_json_min_unknown_class():
    export = json_min_export()
    export[0]["label"] = "horse"
    error = refused(
        "min.json", dump(export), "item 1: class 'horse' is not one of the configured classes"
    )
    assert error.record == "item 1"


def test_refuses_csv_without_id_and_label_header():
    content = f"sample,class\n{A},cat\n".encode()
    error = refused(
        "labels.csv",
        content,
        re.escape(
            "labels.csv, line 1: CSV header needs an 'id' (or 'sample_id') and a 'label' column"
        ),
    )
    assert error.record == "line 1"


def test_refuses_csv_with_header_only():
    error = refused("labels.csv", b"id,label\n", r"^labels\.csv: CSV has a header but no rows$")
    assert error.record is None


def test_refuses_ragged_csv_row():
    content = f"id,image,label\n{A},u,cat\n{B},u\n".encode()
    error = refused("labels.csv", content, r"line 3: row has 2 fields, the header has 3")
    assert error.record == "line 3"


def test_refuses_csv_row_without_sample_id():
    content = f"id,label\n{A},cat\n,dog\n".encode()
    error = refused("labels.csv", content, r"line 3: missing sample id \(column 'id'\)")
    assert error.record == "line 3"


def test_refuses_malformed_csv_quoting():
    content = f'id,label\n{A},"cat"x\n'.encode()
    error = refused("labels.csv", content, "malformed CSV")
    assert error.record == "line 2"


def test_refuses_unknown_sample_id_in_csv():
    content = f"id,label\n{A},cat\nnot-a-sample,dog\n".encode()
    error = refused("labels.csv", content, r"line 3: unknown sample id 'not-a-sample'")
    assert error.record == "line 3"


def test_refuses_csv_id_not_in_this_batch():
    content = f"id,label\n{OUTSIDER},cat\n".encode()
    error = refused("labels.csv", content, r"line 2: sample id '.+' is not in this batch")
    assert error.record == "line 2"


def test_refuses_conflicting_labels_in_csv_naming_both_lines():
    content = f"id,label\n{A},cat\n{B},dog\n{C},\n{A},bird\n".encode()
    error = refused(
        "labels.csv",
        content,
        re.escape(
            f"labels.csv, line 5: conflicting labels for sample id '{A}': "
            "'cat' (line 2) vs 'bird' (line 5)"
        ),
    )
    assert error.record == "line 5"


def test_csv_line_numbers_count_physical_lines():
    content = f'id,note,label\n{A},"two\nlines",cat\n{A},x,dog\n'.encode()
    error = refused("labels.csv", content, r"'cat' \(line 2\) vs 'dog' \(line 4\)")
    assert error.record == "line 4"


def test_a_refused_file_yields_nothing_even_after_good_records():
    # the good first rows must not leak out: the whole file is refused
    content = f"id,label\n{A},cat\n{B},dog\n{C},horse\n".encode()
    refused("labels.csv", content, "line 4: class 'horse'")


# ------------------------------------------------------------------------ layering


def test_module_imports_neither_prefect_nor_tensorflow():
    code = (
        "import sys, activeflow.core.label.labelling; "
        "bad = [m for m in ('prefect', 'tensorflow', 'keras', 'boto3') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_refuses_deeply_nested_json_with_a_message_not_a_recursion_error():
    error = refused("deep.json", b"[" * 10_000 + b"]" * 10_000, r"^deep\.json: JSON nested too deeply")
    assert error.record is None


def test_a_refusal_never_echoes_what_the_file_holds():
    secret = b"root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    error = refused("passwd", secret, r"^passwd, line 1: CSV header needs")
    assert "root" not in str(error) and "daemon" not in str(error)
    assert "(the first line has 1 column)" in str(error)
    tokens = refused("x.json", b'[{"sample_id": {"token": "s3cr3t"}, "label": "cat"}]', "must be a non-empty string")
    assert "s3cr3t" not in str(tokens)
