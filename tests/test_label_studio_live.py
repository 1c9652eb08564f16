"""Label Studio through its API, against a real server (``label_studio`` fixture): a
batch goes out, is annotated through the API, comes back and is imported.

The last test reads a JSON export saved from such a server (label-studio 1.23.2,
``fixtures/label_studio_export.json``) and needs no server.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import httpx
import pytest
from images import write_image
from label_studio_server import LabelStudioServer, free_port

from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.label import label_studio as studio  # `label_studio` is the server fixture
from activeflow.core.label.batches import export_batch
from activeflow.core.label.label_import import import_labels
from activeflow.core.label.label_studio import LabelStudioError
from activeflow.core.label.labelling import (
    BatchItem,
    LabelFileError,
    label_studio_config,
    label_studio_tasks,
    parse_label_file,
)
from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import LocalStore
from activeflow.settings import LabelStudioSettings, load_settings

CLASSES = ["cat", "dog"]
FIXTURE = Path(__file__).parent / "fixtures" / "label_studio_export.json"
# label-studio-sdk 2.0 still uses pydantic v1 idioms (parse_obj, @validator).
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.PydanticDeprecatedSince20")


@pytest.fixture
def ls_settings(label_studio: LabelStudioServer) -> LabelStudioSettings:
    """Settings for the session's server, with a project title of this test's own."""
    return LabelStudioSettings(
        url=label_studio.url,
        api_key=label_studio.token,
        project_title=f"activeflow-test-{uuid.uuid4().hex[:8]}",
    )


def choose(label: str) -> list[dict[str, object]]:
    """An annotation result picking ``label``, as Label Studio's editor writes it."""
    return [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
    ]


def tasks_by_sample(settings: LabelStudioSettings, project_id: int) -> dict[str, int]:
    ls = studio.client(settings)
    return {task.data["sample_id"]: task.id for task in ls.tasks.list(project=project_id)}


# --------------------------------------------------------------------------- project


def test_ensure_project_creates_the_project_then_reuses_it(ls_settings):
    project_id = studio.ensure_project(ls_settings, CLASSES)

    assert studio.ensure_project(ls_settings, CLASSES) == project_id
    assert studio.ensure_project(ls_settings, list(reversed(CLASSES))) == project_id
    ls = studio.client(ls_settings)
    project = ls.projects.get(project_id)
    # Label Studio keeps the config as sent, less the final newline.
    assert (project.title, project.label_config) == (
        ls_settings.project_title,
        label_studio_config(CLASSES).rstrip("\n"),
    )
    titled = [p.id for p in ls.projects.list() if p.title == ls_settings.project_title]
    assert titled == [project_id]


def test_ensure_project_refuses_a_project_labelling_other_classes(ls_settings):
    studio.ensure_project(ls_settings, CLASSES)

    with pytest.raises(LabelStudioError) as refused:
        studio.ensure_project(ls_settings, [*CLASSES, "bird"])

    message = str(refused.value)
    assert message.startswith(f"Label Studio at {ls_settings.url}: could not use project")
    assert (
        "offers classes ['cat', 'dog'], the settings' classes are ['cat', 'dog', 'bird']" in message
    )


def test_several_projects_with_the_title_are_refused(ls_settings):
    ls = studio.client(ls_settings)
    ids = sorted(
        ls.projects.create(
            title=ls_settings.project_title, label_config=label_studio_config(CLASSES)
        ).id
        for _ in range(2)
    )
    with pytest.raises(
        LabelStudioError, match=rf"2 projects have this title \(ids \[{ids[0]}, {ids[1]}\]\)"
    ):
        studio.ensure_project(ls_settings, CLASSES)


# --------------------------------------------------------------------------- round trip


def test_a_batch_goes_out_is_annotated_and_its_labels_come_back(ls_settings, tmp_path):
    """Push a batch, annotate 3 of its 4 tasks through the API, pull the export, import
    it: the labelled set grows by exactly those 3."""
    for n in range(6):
        write_image(tmp_path / "in" / f"{n}.png", n)
    store = LocalStore(tmp_path / "store")
    ingest_images(store, iter_source(str(tmp_path / "in"), labelled=False))
    settings = load_settings(
        storage={"uri": store.uri}, data={"classes": CLASSES}, budget={"per_run": 4}
    )
    first = export_batch(store, settings).batch_id
    second = export_batch(store, settings).batch_id  # the other 2 samples
    assert first is not None and second is not None
    project_id = studio.ensure_project(ls_settings, CLASSES)

    assert studio.push_tasks(ls_settings, project_id, store.get(f"batches/{first}/tasks.json")) == 4
    assert (
        studio.push_tasks(ls_settings, project_id, store.get(f"batches/{second}/tasks.json")) == 2
    )
    # Pushing a batch again (a retry) imports nothing.
    assert studio.push_tasks(ls_settings, project_id, store.get(f"batches/{first}/tasks.json")) == 0
    tasks = tasks_by_sample(ls_settings, project_id)
    assert len(tasks) == 6

    before = load_state(store)
    batch_ids = before.batches[first].sample_ids
    answers = dict(zip(batch_ids[:3], ["cat", "dog", "cat"]))
    ls = studio.client(ls_settings)
    for sample_id, label in answers.items():
        ls.annotations.create(id=tasks[sample_id], result=choose(label))
    ls.annotations.create(id=tasks[before.batches[second].sample_ids[0]], result=choose("dog"))

    export = studio.pull_export(ls_settings, project_id, first)

    exported = json.loads(export)
    assert sorted(task["data"]["sample_id"] for task in exported) == sorted(batch_ids)
    parsed = parse_label_file(
        "label-studio.json",
        export,
        batch_ids=set(batch_ids),
        known_ids=set(before.samples.table.column("id").to_pylist()),
        classes=CLASSES,
        batch_id=first,
    )
    assert {r.sample_id: r.label for r in parsed.records} == answers
    assert (parsed.unlabelled, parsed.skipped) == ([batch_ids[3]], [])

    report = import_labels(store, before, settings, first, "label-studio.json", export)

    after = load_state(store)
    assert (report.imported, report.unlabelled) == (3, [batch_ids[3]])
    grown = {sid: label for sid, label in after.labelled.items() if sid not in before.labelled}
    assert grown == answers


def test_pulling_a_batch_the_project_does_not_hold_is_refused(ls_settings):
    project_id = studio.ensure_project(ls_settings, CLASSES)
    items = [BatchItem(sample_id="a" * 64, image_url="https://example.com/a.png")]
    studio.push_tasks(
        ls_settings, project_id, label_studio_tasks(items, batch_id="b-1", model_version=None)
    )

    with pytest.raises(LabelStudioError) as refused:
        studio.pull_export(ls_settings, project_id, "b-2")

    assert str(refused.value) == (
        f"Label Studio at {ls_settings.url}: could not export batch b-2 from project "
        f"{project_id}: the project has no tasks of this batch (were they pushed to another "
        "project?)"
    )


def test_tasks_of_several_batches_are_refused_before_any_request():
    items = [BatchItem(sample_id=c * 64, image_url=f"https://example.com/{c}.png") for c in "ab"]
    tasks = json.loads(label_studio_tasks(items, batch_id="b-1", model_version=None))
    tasks[1]["data"]["batch_id"] = "b-2"
    nowhere = LabelStudioSettings(url=f"http://127.0.0.1:{free_port()}", api_key="unused")

    with pytest.raises(
        ValueError, match="task 2: batch 'b-2', task 1 is of 'b-1'; one batch expected"
    ):
        studio.push_tasks(nowhere, 1, json.dumps(tasks).encode())


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kind", ["forged JWT", "not a JWT"])
def test_a_bad_token_is_refused_with_the_url_in_the_message(label_studio, kind):
    header, payload, signature = label_studio.token.split(".")
    token = f"{header}.{payload}.{'A' * len(signature)}" if kind == "forged JWT" else "nonsense"
    settings = LabelStudioSettings(url=label_studio.url, api_key=token)

    with pytest.raises(LabelStudioError) as refused:
        studio.ensure_project(settings, CLASSES)

    where = f"Label Studio at {label_studio.url}: could not look up project 'activeflow'"
    assert str(refused.value).startswith(f"{where}: 401 Unauthorized (")
    assert "must be a personal access token" in str(refused.value)


def test_a_legacy_token_is_refused(label_studio):
    """Label Studio 1.23 turns legacy tokens off by default; the message says so."""
    ls = studio.client(LabelStudioSettings(url=label_studio.url, api_key=label_studio.token))
    legacy = ls.users.get_token().token
    settings = LabelStudioSettings(url=label_studio.url, api_key=legacy)

    with pytest.raises(
        LabelStudioError, match="401 Unauthorized .*legacy token authentication has been disabled"
    ):
        studio.ensure_project(settings, CLASSES)


def test_an_unreachable_server_is_named():
    url = f"http://127.0.0.1:{free_port()}"
    settings = LabelStudioSettings(url=url, api_key="any-key")

    with pytest.raises(LabelStudioError) as refused:
        studio.ensure_project(settings, CLASSES)

    where = f"Label Studio at {url}: could not look up project 'activeflow'"
    assert str(refused.value).startswith(f"{where}: server unreachable (ConnectError")


def test_missing_settings_are_named():
    with pytest.raises(
        LabelStudioError, match=r"label_studio.url and label_studio.api_key not set"
    ):
        studio.client(LabelStudioSettings())


# --------------------------------------------------------------------------- local files


def test_local_files_are_served_to_a_project_with_local_storage(ls_settings, label_studio):
    """How Label Studio shows images that are files on its own machine: a URL
    ``/data/local-files/?d=<path under the document root>``, served to users of a project
    whose local-files storage holds the file."""
    image = write_image(label_studio.files_dir / "samples" / "one.png", 1)
    project_id = studio.ensure_project(ls_settings, CLASSES)
    url = f"{label_studio.url}/data/local-files/?d=samples/one.png"
    ls = studio.client(ls_settings)
    access = httpx.post(
        f"{label_studio.url}/api/token/refresh/", json={"refresh": label_studio.token}
    ).json()["access"]
    auth = {"Authorization": f"Bearer {access}"}
    assert httpx.get(url, headers=auth).status_code == 404  # no storage holds it yet

    ls.import_storage.local.create(project=project_id, path=str(image.parent), title="samples")

    served = httpx.get(url, headers=auth)
    assert (served.status_code, served.content) == (200, image.read_bytes())


# --------------------------------------------------------------------------- saved export


def test_a_saved_label_studio_export_parses():
    """``fixtures/label_studio_export.json``: a JSON export from label-studio 1.23.2 of 4
    tasks made by ``label_studio_tasks``: one annotated "cat", one "dog", one with a
    cancelled (skipped) annotation only, one never annotated."""
    ids = [hashlib.sha256(f"sample-{n}".encode()).hexdigest() for n in range(1, 5)]
    content = FIXTURE.read_bytes()

    parsed = parse_label_file(
        FIXTURE.name,
        content,
        batch_ids=set(ids),
        known_ids=set(ids),
        classes=CLASSES,
        batch_id="b-20260101T000000Z-example",
    )

    assert [(r.sample_id, r.label) for r in parsed.records] == [(ids[0], "cat"), (ids[1], "dog")]
    assert (parsed.skipped, parsed.unlabelled, parsed.disagreements) == ([ids[2]], [ids[3]], [])
    with pytest.raises(LabelFileError, match="not in this batch"):
        parse_label_file(
            FIXTURE.name, content, batch_ids=set(ids[:3]), known_ids=set(ids), classes=CLASSES
        )


@pytest.mark.usefixtures("prefect_harness")
def test_flows_push_the_batch_and_pull_its_labels(ls_settings, tmp_path):
    """export-batch pushes to the configured project; import-labels 'label-studio' pulls."""
    from activeflow.flows.export_batch import export_batch_flow
    from activeflow.flows.import_labels import import_labels_flow

    for n in range(3):
        write_image(tmp_path / "in" / f"{n}.png", 100 + n)
    store = LocalStore(tmp_path / "store")
    ingest_images(store, iter_source(str(tmp_path / "in"), labelled=False))
    settings = load_settings(
        storage={"uri": store.uri}, data={"classes": CLASSES}, budget={"per_run": 3},
        label_studio={**ls_settings.model_dump(), "api_key": ls_settings.api_key.get_secret_value(),
                      "project_title": "activeflow-flows"},
    )

    exported = export_batch_flow(settings)

    assert exported.label_studio is not None and exported.label_studio["pushed"] == 3
    tasks = tasks_by_sample(settings.label_studio, exported.label_studio["project_id"])
    batch = load_state(store).batches[exported.batch_id].sample_ids
    assert sorted(tasks) == sorted(batch)
    ls = studio.client(settings.label_studio)
    ls.annotations.create(id=tasks[batch[0]], result=choose("dog"))
    ls.annotations.create(id=tasks[batch[1]], result=choose("cat"))

    report = import_labels_flow(exported.batch_id, "label-studio", settings=settings)

    assert (report.imported, report.unlabelled, report.still_queued) == (2, [batch[2]], 1)
    assert {sid: load_state(store).labelled[sid] for sid in batch[:2]} == {batch[0]: "dog", batch[1]: "cat"}
    again = import_labels_flow(exported.batch_id, "label-studio", settings=settings)
    assert (again.imported, again.already_imported) == (0, 2)


def test_a_batch_whose_push_failed_is_pushed_by_the_next_export(ls_settings, tmp_path):
    """The batch is committed before its push: a push that fails (server down) must not
    leave it out of Label Studio for good; the next export pushes every open batch."""
    from activeflow.flows.export_batch import export_batch_flow

    for n in range(6):
        write_image(tmp_path / "in" / f"{n}.png", 200 + n)
    store = LocalStore(tmp_path / "store")
    ingest_images(store, iter_source(str(tmp_path / "in"), labelled=False))
    reachable = {**ls_settings.model_dump(), "api_key": ls_settings.api_key.get_secret_value(),
                 "project_title": "activeflow-push-retry"}
    down = load_settings(storage={"uri": store.uri}, data={"classes": CLASSES}, budget={"per_run": 3},
                         label_studio={**reachable, "url": "http://127.0.0.1:9"})
    with pytest.raises(studio.LabelStudioError, match="127.0.0.1:9"):
        export_batch_flow(down)
    (first,) = load_state(store).batches  # committed, not pushed

    exported = export_batch_flow(down.model_copy(update={"label_studio": down.label_studio.model_copy(
        update={"url": ls_settings.url})}))

    tasks = tasks_by_sample(ls_settings, exported.label_studio["project_id"])
    state = load_state(store)
    assert sorted(tasks) == sorted(state.batches[first].sample_ids + state.batches[exported.batch_id].sample_ids)
