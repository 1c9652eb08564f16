"""``activeflow <command>``: parse input, build the settings, run a flow, print the result."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from activeflow.settings import Settings, SettingsError, load_settings


# Errors a person can act on: printed as one line, exit code 2, no traceback.
class UsageError(ValueError):
    """Options that contradict each other; the message says which and why."""


_USER_ERRORS: tuple[type[Exception], ...] = (SettingsError, UsageError)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="activeflow", description="Prefect-orchestrated active learning for images."
    )
    _global_options(parser, None)
    # The same options after the command too (`activeflow status --store X`); there they
    # default to "not given", so they never undo what was given before the command.
    after = argparse.ArgumentParser(add_help=False)
    _global_options(after, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    command = functools.partial(commands.add_parser, parents=[after])

    ingest = command("ingest", help="ingest new images into the store")
    ingest.add_argument("source", help="folder, s3://bucket/prefix or tfds:NAME[/SPLIT]")
    ingest.add_argument("--labelled", action="store_true", help="SOURCE is <class>/<image>")
    ingest.add_argument("--split", choices=["train", "test"],
                        help="with --labelled: training labels (default) or the held-out test set")
    _json_flag(ingest)

    _json_flag(command("score", help="score the pool with the champion"))

    export = command("export-batch", help="export the next labelling batch")
    _budget_options(export)
    _json_flag(export)

    imports = command("import-labels", help="import a batch's completed labels")
    imports.add_argument("batch_id")
    imports.add_argument(
        "file",
        help="Label Studio JSON / JSON-MIN / CSV export or CSV id,label (path or s3:// URI), "
        "or 'label-studio' to pull the batch from the configured Label Studio project",
    )
    _json_flag(imports)

    _json_flag(command("retrain", help="retrain; promote if not worse"))
    _json_flag(command("status", help="what the store holds"))
    _json_flag(command("migrate", help="build the catalog of a store written before it (once)"))

    cycle = command("cycle", help="score -> export-batch (simulate: + oracle, retrain)")
    cycle.add_argument("--simulate", action="store_true", help="answer batches from --oracle")
    cycle.add_argument("--oracle", help="ground truth folder laid out as <class>/<image>")
    cycle.add_argument("--rounds", type=_at_least_one, default=1)
    _budget_options(cycle)
    _json_flag(cycle)

    bench = command("benchmark", help="label efficiency of strategies against random")
    bench.add_argument("--strategies", help="comma-separated (default: all); random always runs")
    bench.add_argument("--seeds", type=_at_least_one, default=5)
    bench.add_argument("--rounds", type=_at_least_one, default=8)
    bench.add_argument("--budget", type=_at_least_one, default=20, help="labels per round")
    bench.add_argument(
        "--dataset",
        help="digits (default: scikit-learn's bundled scans), shapes[:CLASSES] or "
        "shapes-rotated[:CLASSES] (synthetic, 64 px), a folder <class>/<image> or tfds:NAME[/SPLIT]",
    )
    bench.add_argument("--test-size", type=float, default=0.2, help="fraction, or a count if >= 1")
    bench.add_argument("--seed-per-class", type=_at_least_one, default=2)
    bench.add_argument("--pool-size", type=_at_least_one)
    bench.add_argument("--workers", type=_at_least_one, default=2, help="runs in parallel")
    bench.add_argument("--out", default="activeflow-benchmark")
    _json_flag(bench)

    demo = command("demo", help="the whole loop on bundled digits, margin vs random")
    demo.add_argument("--out", default="activeflow-demo", help="where data, stores and report go")
    demo.add_argument("--rounds", type=_at_least_one, default=4)
    demo.add_argument("--budget", type=_at_least_one, default=40, help="labels per round")

    command(
        "serve",
        help="serve the deployments (schedules, triggers) until interrupted; needs PREFECT_API_URL",
    )
    return parser


def _global_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--config", type=Path, default=default,
                        help="settings file (default: ./activeflow.toml)")
    parser.add_argument("--store", default=default,
                        help="storage.uri: a local folder or s3://bucket/prefix")
    parser.add_argument("--endpoint-url", default=default,
                        help="storage.endpoint_url for non-AWS S3 servers")
    parser.add_argument("-v", "--verbose", action="store_true", default=default or False,
                        help="show Prefect's flow and task logs on the terminal")


def _json_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument("--json", action="store_true", help="print JSON")


def _at_least_one(text: str) -> int:
    """argparse type of a count: a whole number >= 1 (0 rounds or seeds is a typo, not a run)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def _budget_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--budget", type=int, help="budget.per_run for this run")
    command.add_argument("--total-budget", type=int, help="budget.total for this run")
    command.add_argument("--strategy", help="strategy.name for this run")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Explicit parameters, as nested settings, on top of every other source."""
    overrides: dict[str, dict[str, Any]] = {}

    def put(group: str, field: str, value: Any) -> None:
        if value is not None:
            overrides.setdefault(group, {})[field] = value

    put("storage", "uri", args.store)
    put("storage", "endpoint_url", args.endpoint_url)
    if args.command != "demo":
        put("budget", "per_run", getattr(args, "budget", None))
    put("budget", "total", getattr(args, "total_budget", None))
    put("strategy", "name", getattr(args, "strategy", None))
    return overrides


# Prefect gives the temporary server a command starts 20 s; a busy 2-core machine needs more.
_SERVER_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
_SERVER_TIMED_OUT = "Timed out while attempting to connect to ephemeral Prefect API server"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # A temporary Prefect server started for one command has no business phoning home.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault(_SERVER_TIMEOUT, "120")
    # Python's default for SIGTERM ends the process at once, skipping the exit handlers that
    # stop Prefect's temporary server: it would outlive us. Unwind as for Ctrl-C instead.
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        settings = load_settings(args.config, **_overrides(args))
        with _prefect_logs(args, restore=argv is not None):
            result = _run(args, settings)
    except BaseException as error:
        message = _failure_message(error)
        if message is None:
            raise
        print(f"activeflow {args.command}: {message}", file=sys.stderr)
        return 128 + _stopped_by[0] if _stopped_by else 2
    finally:
        signal.signal(signal.SIGTERM, previous)  # main() may be called in-process (tests)
    _print(args.command, result, as_json=getattr(args, "json", False))
    return _warnings(result)


_WORKER_CONSOLE_LEVEL = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"  # Prefect's logging.yml override


@contextlib.contextmanager
def _prefect_logs(args: argparse.Namespace, *, restore: bool) -> Iterator[None]:
    """Keep Prefect's per-task logs and tracebacks off the terminal (the command prints its
    result, or one line for an expected failure); ``-v`` brings them back. The demo and the
    benchmark keep them in ``activeflow.log`` in their output folder. `serve` is a service:
    its logs stay on the terminal. (The Prefect UI gets every log either way.) ``restore``
    for calls in-process (tests); a command leaves the terminal quiet, as the temporary
    server logs its shutdown from an exit handler, after main() returned."""
    if args.command in ("status", "migrate", "serve") or args.verbose:
        yield
        return
    import logging

    import prefect.main  # noqa: F401  (sets up Prefect's logging; `import prefect` is lazy)
    from prefect.logging.handlers import PrefectConsoleHandler

    root = logging.getLogger()
    consoles = [h for h in root.handlers if isinstance(h, PrefectConsoleHandler)]
    levels = [h.level for h in consoles]
    log_file = None
    if args.command in ("demo", "benchmark"):
        from activeflow.evaluation import prepare_output_folder

        prepare_output_folder(Path(args.out), args.command)  # refuses a folder it did not make
        log_file = logging.FileHandler(Path(args.out) / "activeflow.log")
        log_file.setFormatter(consoles[0].formatter if consoles else logging.Formatter())
        root.addHandler(log_file)
    for handler in consoles:
        handler.setLevel(logging.CRITICAL + 1)
    # Processes this command starts (a local Dask cluster's workers) set up Prefect's
    # logging from the environment: the same quiet console there.
    console_level = os.environ.get(_WORKER_CONSOLE_LEVEL)
    os.environ[_WORKER_CONSOLE_LEVEL] = "CRITICAL"
    shown = logging.StreamHandler(sys.stderr)  # what a long command says as it goes
    shown.setFormatter(logging.Formatter("%(message)s"))
    progress = logging.getLogger("activeflow.progress")
    progress.setLevel(logging.INFO)
    progress.addHandler(shown)
    try:
        yield
    finally:
        progress.removeHandler(shown)
        if log_file is not None:
            root.removeHandler(log_file)
            log_file.close()
        if restore:
            for handler, level in zip(consoles, levels, strict=True):
                handler.setLevel(level)
            if console_level is None:
                os.environ.pop(_WORKER_CONSOLE_LEVEL, None)
            else:
                os.environ[_WORKER_CONSOLE_LEVEL] = console_level



_stopped_by: list[int] = []  # the signal that stopped this command, once one has


class _Stopped(BaseException):  # a BaseException, like KeyboardInterrupt: nothing swallows it
    pass


def _stop_on_sigterm(signum: int, _frame: object) -> None:
    _stopped_by.append(signum)
    raise _Stopped(signal.Signals(signum).name)


def _failure_message(error: BaseException) -> str | None:
    """The one line a person is shown for an expected failure; None for a bug (traceback)."""
    if _stopped_by:  # whatever the code it interrupted turned the signal into
        return (f"stopped by {signal.Signals(_stopped_by[0]).name}; what was committed stays, "
                "rerun the command to finish")
    if isinstance(error, _USER_ERRORS + _core_errors()):
        return f"error: {error}"
    if _is_prefect_settings_error(error):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        return (f"error: invalid Prefect settings ({error.title}: {problems}); check the PREFECT_* "
                "variables in the environment and the active Prefect profile")
    if isinstance(error, RuntimeError) and str(error).startswith(_SERVER_TIMED_OUT):
        return (
            f"error: Prefect's temporary server did not start within "
            f"{os.environ[_SERVER_TIMEOUT]} s (is the machine busy?); nothing was run. Rerun it, "
            f"allow more time with {_SERVER_TIMEOUT}=<seconds>, or start a server once "
            "(`prefect server start`) and point commands at it with "
            "PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    return None


def _is_prefect_settings_error(error: BaseException) -> bool:
    """A pydantic validation error raised while Prefect read its own settings (a PREFECT_*
    variable or profile entry it cannot parse)."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return False
    frames = traceback.extract_tb(error.__traceback__)
    return any(f"{os.sep}prefect{os.sep}settings{os.sep}" in frame.filename for frame in frames)


def _warnings(result: Any) -> int:
    """1, with what to look at on stderr, when a command did its work but some of the
    input could not be used as given (a changed label is never overwritten, an image
    already in the store is never moved, late labels never overspend the total budget)."""
    warnings = [w for w in (_conflict_warning(result), _over_budget_warning(result)) if w]
    for warning in warnings:
        print(f"activeflow: warning: {warning}", file=sys.stderr)
    return 1 if warnings else 0


def _conflict_warning(result: Any) -> str | None:
    conflicts = getattr(result, "conflicts", None)
    if not conflicts:
        return None
    if isinstance(conflicts[0], str):  # ingest: each says what and why
        lines = conflicts
        what = "image was" if len(conflicts) == 1 else "images were"
        head = f"{len(conflicts)} {what} not ingested"
    else:
        lines = [f"{c.sample_id} is {c.imported!r}, the file says {c.offered!r}" for c in conflicts]
        what = "label conflicts" if len(conflicts) == 1 else "labels conflict"
        were = "was" if len(conflicts) == 1 else "were"
        head = f"{len(conflicts)} {what} with what was imported before and {were} not written"
    more = f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""
    return f"{head}: {'; '.join(lines[:5])}{more}"


def _over_budget_warning(result: Any) -> str | None:
    over = getattr(result, "over_budget", None)
    if not over:
        return None
    return (
        f"{len(over)} late label(s) of the released batch {result.batch_id} were not written: "
        "the total budget (budget.total) is spent; those samples stay in the pool"
    )


def _core_errors() -> tuple[type[Exception], ...]:
    from activeflow.core.ingest.sources import SourceError
    from activeflow.core.label.label_studio import LabelStudioError
    from activeflow.core.label.labelling import LabelFileError
    from activeflow.core.score.scoring import ScoringError
    from activeflow.core.storage.catalog import CatalogConflict
    from activeflow.core.storage.store import ObjectNotFound, StoreError
    from activeflow.core.train.training import TrainingError
    from activeflow.evaluation.label_efficiency import BenchmarkError

    return (
        LabelFileError, LabelStudioError, ScoringError, SourceError, StoreError, ObjectNotFound,
        TrainingError, BenchmarkError,
        FileExistsError, CatalogConflict,
    )


def _run(args: argparse.Namespace, settings: Settings) -> Any:
    command = args.command
    if command == "status":  # reads the store only: no Prefect run needed
        from activeflow.core.storage.pool import load_state
        from activeflow.core.storage.store import LocalStore, StoreError, open_store

        store = open_store(settings.storage)
        if isinstance(store, LocalStore) and not store.root.is_dir():
            raise StoreError(f"no store at {store.root}: nothing was ingested there (check --store or storage.uri)")
        return load_state(store).summary(settings.budget.total)
    if command == "migrate":  # reads and writes the store only: no Prefect run needed
        from activeflow.core.storage.migrate import migrate
        from activeflow.core.storage.store import open_store

        return migrate(open_store(settings.storage))
    if command == "ingest":
        from activeflow.flows.ingest import ingest_flow

        if args.split and not args.labelled:
            raise UsageError(
                f"--split {args.split} needs --labelled (SOURCE laid out as <class>/<image>); "
                "without it images go to the unlabelled pool"
            )
        split = (args.split or "train") if args.labelled else "pool"
        return ingest_flow(args.source, split=split, settings=settings)
    if command == "score":
        from activeflow.flows.score import run_score_flow

        plan = run_score_flow(settings)
        return {
            "run_id": plan.run_id, "model_version": plan.model_version,
            "scored": plan.total, "reused": plan.reused,
        }
    if command == "export-batch":
        from activeflow.flows.export_batch import export_batch_flow

        result = export_batch_flow(settings)
        hidden = {"reason"} | ({"label_studio"} if result.label_studio is None else set())
        return result.model_dump(exclude=hidden) if args.json else result
    if command == "import-labels":
        from activeflow.flows.import_labels import import_labels_flow

        return import_labels_flow(args.batch_id, args.file, settings=settings)
    if command == "retrain":
        from activeflow.flows.retrain import retrain_flow

        return retrain_flow(settings)
    if command == "cycle":
        from activeflow.flows.cycle import cycle_flow
        from activeflow.flows.score import shard_runner

        return cycle_flow.with_options(task_runner=shard_runner(settings))(
            settings, simulate=args.simulate, oracle=args.oracle, rounds=args.rounds
        )
    if command == "demo":
        return _demo(args, settings)
    if command == "benchmark":
        return _benchmark(args, settings)
    if command == "serve":
        from activeflow.deployments import serve_deployments

        serve_deployments(settings)
        return "stopped serving; the schedules stay active for the next `activeflow serve`"
    raise AssertionError(f"unhandled command {command}")


def _demo(args: argparse.Namespace, settings: Settings) -> Any:
    from activeflow.evaluation.demo_data import at_digit_size, demo_settings

    run = at_digit_size(demo_settings(settings, per_run=args.budget))
    logs = "shown above" if args.verbose else f"in {Path(args.out) / 'activeflow.log'} (-v shows them here)"
    print(f"activeflow demo: margin against random side by side, {args.rounds} rounds of {args.budget} "
          f"labels each at {run.model.image_size} px; about {_demo_duration(run, args.rounds)} on 2 cores, "
          f"most of it training. Prefect's logs are {logs}.", file=sys.stderr, flush=True)
    server_started = _start_temporary_server()
    try:
        from activeflow.core.score.modeling import one_thread_per_op  # TensorFlow: seconds
        from activeflow.flows.demo import demo_flow
        from activeflow.flows.score import shard_runner
    finally:
        server_started()
    one_thread_per_op()  # its two strategies train side by side
    result = demo_flow.with_options(task_runner=shard_runner(settings))(run, out=args.out, rounds=args.rounds)
    print(result.table)
    return result.files


def _start_temporary_server() -> Callable[[], None]:
    """Start Prefect's temporary server now, in a thread, when no PREFECT_API_URL names a
    server, so that its start-up overlaps the imports that follow; the flow's run later
    finds it running (Prefect keeps one per process). Returns the wait for it, which raises
    what the start raised."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return lambda: None
    from prefect.server.api.server import SubprocessASGIServer

    failed: list[BaseException] = []

    def start() -> None:
        try:
            SubprocessASGIServer().start()
        except BaseException as error:  # noqa: BLE001 (raised again by the wait, in the caller)
            failed.append(error)

    thread = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failed:
            raise failed[0]

    return wait


def _demo_duration(settings: Settings, rounds: int) -> str:
    """Rough, fitted to an idle 2-core machine (benchmarks/demo_rounds.py: 59 s for 4 rounds,
    108 s for 8, at 8 px): per round the two retrains side by side, whose updates cost about
    2.5 + 0.015 * side**2 ms each (train_steps.py: 3.5 ms at 8 px, 17.5 at 32), and 6.5 s
    of the rest of the loop."""
    step_ms = 2.5 + 0.015 * settings.model.image_size**2
    seconds = 5 + (rounds + 1) * (6.5 + step_ms * settings.model.min_steps / 1000)
    return f"{round(seconds, -1):.0f} s" if seconds < 100 else f"{max(2, round(seconds / 60))} minutes"


def _benchmark(args: argparse.Namespace, settings: Settings) -> Any:
    from prefect.task_runners import ThreadPoolTaskRunner

    from activeflow.evaluation import label_efficiency
    from activeflow.evaluation.demo_data import demo_settings
    from activeflow.flows.benchmark import benchmark_flow

    strategies = (
        args.strategies.split(",") if args.strategies else list(label_efficiency.DEFAULT_STRATEGIES)
    )
    run = demo_settings(settings, per_run=args.budget)
    result = benchmark_flow.with_options(
        task_runner=ThreadPoolTaskRunner(max_workers=args.workers)
    )(
        run, out=args.out, strategies=strategies, seeds=args.seeds, rounds=args.rounds,
        budget=args.budget, dataset=args.dataset, test_size=args.test_size,
        seed_per_class=args.seed_per_class, pool_size=args.pool_size,
    )
    return result if args.json else result.table


def _print(command: str, result: Any, *, as_json: bool) -> None:
    if not as_json:
        from activeflow.views import human_view

        text = result if isinstance(result, str) else human_view(command, result)
        if text is not None:
            print(text)
            return
    if hasattr(result, "model_dump"):
        result = result.model_dump()
    elif isinstance(result, list):
        result = [r.model_dump() if hasattr(r, "model_dump") else r for r in result]
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
