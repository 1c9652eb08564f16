"""Label Studio over its API: make (or find) the project, push a batch's tasks, pull the
annotations back.

Plain Python over label-studio-sdk 2.x (no Prefect, no store access): functions take the
``LabelStudioSettings`` group and bytes, so callers decide where the bytes come from and
go. The bytes are the formats of ``activeflow.core.label.labelling``: ``push_tasks`` imports the tasks
JSON that ``label_studio_tasks`` writes, and ``pull_export`` returns a Label Studio JSON
export (https://labelstud.io/guide/export#JSON) that ``parse_label_file`` reads.

Authentication is a personal access token (a JWT refresh token; Label Studio: Account &
Settings > Personal Access Token): the SDK trades it for short-lived access tokens at
``/api/token/refresh/``. Label Studio 1.23 refuses legacy API tokens unless an
organisation turns them back on; the SDK sends any key that is not a JWT as a legacy one.

Every failure of the server or the network is a ``LabelStudioError`` whose message names
the server URL, what was being done and what went wrong (unreachable, token refused, ...).

Community edition only: ``pull_export`` uses the synchronous export endpoint
(``/api/projects/<id>/export``), which Label Studio Enterprise answers with 404.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

import httpx

from activeflow.core.label.labelling import CHOICES_TAG, IMAGE_TAG, label_studio_config
from activeflow.settings import LabelStudioSettings

if TYPE_CHECKING:  # the SDK takes about a second to import (pandas); see client()
    from label_studio_sdk import LabelStudio

TIMEOUT_S = 60.0  # per request; an export of a large project takes a while


class LabelStudioError(RuntimeError):
    """Label Studio could not be used; the message names the URL, the action and the
    problem."""

    def __init__(self, url: str | None, action: str, problem: str) -> None:
        self.url = url
        self.action = action
        self.problem = problem
        where = f"Label Studio at {url}" if url else "Label Studio"
        super().__init__(f"{where}: could not {action}: {problem}")


def client(settings: LabelStudioSettings) -> LabelStudio:
    """An SDK client for the configured server. Raises ``LabelStudioError`` when the URL
    or the token is not set, or the token is an expired JWT."""
    url = settings.url
    if url is None or settings.api_key is None:
        missing = [name for name in ("url", "api_key") if getattr(settings, name) is None]
        raise LabelStudioError(
            url,
            "connect",
            f"label_studio.{' and label_studio.'.join(missing)} not set "
            "(environment: ACTIVEFLOW_LABEL_STUDIO__URL, ACTIVEFLOW_LABEL_STUDIO__API_KEY)",
        )
    from label_studio_sdk import LabelStudio

    with _calling(url, "connect"):
        # A trailing slash keeps a path prefix (https://host/label-studio) in the token
        # refresh URL, which the SDK builds with urljoin.
        return LabelStudio(
            base_url=url.rstrip("/") + "/",
            api_key=settings.api_key.get_secret_value(),
            timeout=TIMEOUT_S,
        )


def ensure_project(settings: LabelStudioSettings, classes: Sequence[str]) -> int:
    """The id of the project titled ``settings.project_title``, made with
    ``label_studio_config(classes)`` if there is none.

    An existing project must label the same classes (in any order) with the same control
    names; its config is otherwise left as the team made it. Raises ``LabelStudioError``
    if it labels other classes, or if several projects have the title.
    """
    config = label_studio_config(classes)  # checks the classes first
    ls = client(settings)
    title = settings.project_title
    with _calling(settings.url, f"look up project {title!r}"):
        # The server's title filter matches substrings; keep the exact title only.
        ids = sorted(p.id for p in ls.projects.list(title=title) if p.title == title)
    if len(ids) > 1:
        raise LabelStudioError(
            settings.url,
            f"pick project {title!r}",
            f"{len(ids)} projects have this title (ids {ids}); rename all but one, "
            "or set label_studio.project_title to a title of its own",
        )
    if ids:
        with _calling(settings.url, f"read project {title!r} (id {ids[0]})"):
            existing = ls.projects.get(ids[0]).label_config or ""
        problem = _config_problem(existing, classes)
        if problem is not None:
            raise LabelStudioError(settings.url, f"use project {title!r} (id {ids[0]})", problem)
        return ids[0]
    with _calling(settings.url, f"create project {title!r}"):
        return ls.projects.create(title=title, label_config=config).id


def push_tasks(settings: LabelStudioSettings, project_id: int, tasks_json: bytes) -> int:
    """Import one batch's tasks (``label_studio_tasks`` output) into the project; return
    how many were imported.

    Pushing a batch is done once: if the project already holds tasks of this batch
    (``data.batch_id``), nothing is imported and 0 is returned, so a retry after a lost
    answer does not duplicate the batch. Raises ``ValueError`` if ``tasks_json`` is not a
    non-empty list of tasks of one batch.
    """
    batch_id, tasks = _batch_tasks(tasks_json)
    ls = client(settings)
    with _calling(settings.url, f"look for batch {batch_id} in project {project_id}"):
        already = _first_task_of_batch(ls, project_id, batch_id)
    if already is not None:
        return 0
    action = f"import {len(tasks)} tasks of batch {batch_id} into project {project_id}"
    with _calling(settings.url, action):
        # No SDK retries: a retried POST whose first answer was lost would import twice.
        response = ls.projects.import_tasks(
            project_id, request=tasks, request_options={"max_retries": 0}
        )
    if response.task_count is None:
        # Label Studio Enterprise queues imports and answers {"import": <id>}.
        return len(tasks)
    if response.task_count != len(tasks):
        raise LabelStudioError(
            settings.url, action, f"the server reports {response.task_count} tasks imported"
        )
    return response.task_count


def pull_export(settings: LabelStudioSettings, project_id: int, batch_id: str) -> bytes:
    """The project's Label Studio JSON export, every task of the batch (``data.batch_id``)
    with its annotations, unannotated tasks included. Raises ``LabelStudioError`` if the
    project has no task of this batch."""
    ls = client(settings)
    action = f"export project {project_id}"
    with _calling(settings.url, action):
        content = b"".join(
            ls.projects.exports.download_sync(
                project_id, export_type="JSON", download_all_tasks=True, download_resources=False
            )
        )
    try:
        tasks = json.loads(content)
    except ValueError:
        raise LabelStudioError(settings.url, action, "the export is not JSON") from None
    if not isinstance(tasks, list):
        raise LabelStudioError(settings.url, action, "the export is not a JSON list of tasks")
    # The export endpoint has no filter on task data (and ignores the SDK's `ids`), so
    # the batch is picked here.
    mine = [task for task in tasks if _task_batch(task) == batch_id]
    if not mine:
        raise LabelStudioError(
            settings.url,
            f"export batch {batch_id} from project {project_id}",
            "the project has no tasks of this batch (were they pushed to another project?)",
        )
    return json.dumps(mine, indent=2, ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- helpers


@contextmanager
def _calling(url: str | None, action: str) -> Iterator[None]:
    """Turn what the SDK and httpx raise into ``LabelStudioError``."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except ApiError as error:
        raise LabelStudioError(url, action, _api_problem(error)) from error
    except httpx.TransportError as error:  # refused, DNS, timeouts, broken connections
        raise LabelStudioError(
            url, action, f"server unreachable ({type(error).__name__}: {error})"
        ) from error
    except json.JSONDecodeError as error:  # the SDK's token refresh reads any answer as JSON
        raise LabelStudioError(
            url, action, "the answer is not JSON; is this the URL of a Label Studio server?"
        ) from error


def _api_problem(error: Any) -> str:
    status = error.status_code
    detail = _detail(error.body)
    if status == 401:
        return (
            f"401 Unauthorized ({detail}): label_studio.api_key must be a personal access "
            "token of this server (Account & Settings > Personal Access Token)"
        )
    if status == 403:
        return f"403 Forbidden ({detail}): the token's user may not do this"
    if status == 404:
        return f"404 Not Found ({detail}): check label_studio.url and the project id"
    return f"HTTP {status} ({detail})"


def _detail(body: Any) -> str:
    if isinstance(body, dict):
        detail = str(body.get("detail") or "")
        errors = body.get("validation_errors")
        if errors:
            detail = (
                f"{detail}: {json.dumps(errors, ensure_ascii=False)}" if detail else str(errors)
            )
        text = detail or json.dumps(body, ensure_ascii=False)
    else:
        text = str(body)
    text = " ".join(text.split())
    if text.startswith("<"):
        return "an HTML page"
    return text if len(text) <= 300 else text[:300] + "..."


def _config_problem(label_config: str, classes: Sequence[str]) -> str | None:
    """What keeps a project's labelling config from labelling ``classes`` the way
    ``label_studio_config`` does; None if nothing."""
    try:
        root = ElementTree.fromstring(label_config)
    except ElementTree.ParseError as error:
        return f"its labelling config is not XML ({error})"
    images = [e for e in root.iter("Image") if e.get("name") == IMAGE_TAG]
    controls = [e for e in root.iter("Choices") if e.get("name") == CHOICES_TAG]
    if len(images) != 1 or len(controls) != 1:
        return (
            f"its labelling config needs one Image named {IMAGE_TAG!r} and one Choices "
            f"named {CHOICES_TAG!r}"
        )
    found = [choice.get("value") for choice in controls[0].iter("Choice")]
    if sorted(map(str, found)) != sorted(classes) or len(found) != len(classes):
        return (
            f"its labelling config offers classes {found}, the settings' classes are "
            f"{list(classes)}; give the project a new title (label_studio.project_title) "
            "or make the classes agree"
        )
    return None


def _batch_tasks(tasks_json: bytes) -> tuple[str, list[dict[str, Any]]]:
    """(batch id, tasks) of a tasks JSON file of one batch."""
    try:
        tasks = json.loads(tasks_json)
    except ValueError as error:
        raise ValueError(f"tasks JSON is malformed: {error}") from None
    if not isinstance(tasks, list) or not tasks:
        raise ValueError("tasks JSON must be a non-empty list of tasks")
    batch_id = _task_batch(tasks[0])
    if batch_id is None:
        raise ValueError("tasks JSON, task 1: no string data.batch_id")
    for number, task in enumerate(tasks[1:], start=2):
        this = _task_batch(task)
        if this != batch_id:
            problem = (
                "no string data.batch_id"
                if this is None
                else f"batch {this!r}, task 1 is of {batch_id!r}; one batch expected"
            )
            raise ValueError(f"tasks JSON, task {number}: {problem}")
    return batch_id, tasks


def _task_batch(task: Any) -> str | None:
    data = task.get("data") if isinstance(task, dict) else None
    batch_id = data.get("batch_id") if isinstance(data, dict) else None
    return batch_id if isinstance(batch_id, str) else None


def _first_task_of_batch(ls: LabelStudio, project_id: int, batch_id: str) -> int | None:
    """Id of one task of the project whose ``data.batch_id`` is ``batch_id``, or None."""
    query = {
        "filters": {
            "conjunction": "and",
            "items": [
                {
                    "filter": "filter:tasks:data.batch_id",
                    "operator": "equal",
                    "type": "String",
                    "value": batch_id,
                }
            ],
        }
    }
    pages = ls.tasks.list(
        project=project_id, query=json.dumps(query), fields="task_only", page_size=1
    )
    task = next(iter(pages), None)
    return None if task is None else task.id


# --------------------------------------------------------------------------- batches

LABEL_STUDIO_SOURCE = "label-studio"  # as a labels location: pull from the configured server


def is_configured(settings: LabelStudioSettings) -> bool:
    return settings.url is not None and settings.api_key is not None


def push_batch(settings: LabelStudioSettings, classes: Sequence[str], tasks_json: bytes) -> tuple[int, int]:
    """Create or reuse the project, then push a batch's tasks: (project id, tasks pushed;
    0 when the project already holds that batch)."""
    project_id = ensure_project(settings, classes)
    return project_id, push_tasks(settings, project_id, tasks_json)


def pull_batch(settings: LabelStudioSettings, classes: Sequence[str], batch_id: str) -> bytes:
    """The batch's tasks with their annotations, as a Label Studio JSON export."""
    return pull_export(settings, ensure_project(settings, classes), batch_id)
