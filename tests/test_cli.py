"""The command line: JSON outputs, settings from flags, and errors a person can act on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from images import write_image, write_labelled_tree
from processes import processes_with

from activeflow.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_status_json_on_an_empty_store(tmp_path, capsys):
    (tmp_path / "store").mkdir()
    code, out, _ = run_cli(capsys, "--store", str(tmp_path / "store"), "status", "--json")
    assert code == 0
    assert json.loads(out) == {
        "unlabelled": 0, "queued": 0, "labelled": 0, "test": 0, "quarantined": 0,
        "budget_spent": 0, "budget_remaining": None, "champion": None,
    }


def test_status_through_the_installed_entry_point(tmp_path):
    env_store = tmp_path / "store"
    env_store.mkdir()
    result = subprocess.run(
        [Path(sys.executable).parent / "activeflow", "--store", str(env_store), "status", "--json"],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(result.stdout)["champion"] is None


def test_invalid_setting_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACTIVEFLOW_BUDGET__PER_RUN", "0")
    code, out, err = run_cli(capsys, "--store", str(tmp_path), "status")
    assert code == 2 and out == ""
    assert "activeflow status: error: invalid settings: budget.per_run" in err


@pytest.mark.usefixtures("prefect_harness")
def test_ingest_export_and_refused_import_through_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACTIVEFLOW_DATA__CLASSES", '["cat", "dog"]')
    store = tmp_path / "store"
    for n in range(5):
        write_image(tmp_path / "in" / f"{n}.png", n)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG nope")
    write_labelled_tree(tmp_path / "test", {"cat": 1, "dog": 1}, first_seed=100)
    base = ["--store", str(store)]

    code, out, _ = run_cli(capsys, *base, "ingest", str(tmp_path / "in"), "--json")
    assert code == 0
    assert {k: json.loads(out)[k] for k in ("new", "duplicate", "quarantined")} == {
        "new": 5, "duplicate": 0, "quarantined": 1,
    }
    code, out, _ = run_cli(capsys, *base, "ingest", str(tmp_path / "test"), "--labelled", "--split", "test", "--json")
    assert json.loads(out)["new"] == 2

    code, out, _ = run_cli(capsys, *base, "export-batch", "--budget", "3", "--json")
    assert code == 0
    exported = json.loads(out)
    assert set(exported) == {"batch_id", "size", "files"} and exported["size"] == 3
    assert set(exported["files"]) == {"label_studio", "csv"}
    assert Path(exported["files"]["csv"]).read_text().startswith("id,image,predicted,score")

    bad = tmp_path / "labels.csv"
    bad.write_text("id,label\nnot-a-sample,cat\n")
    code, out, err = run_cli(capsys, *base, "import-labels", exported["batch_id"], str(bad))
    assert code == 2
    assert f"{bad}, line 2: unknown sample id 'not-a-sample'" in err
    code, out, _ = run_cli(capsys, *base, "status", "--json")
    status = json.loads(out)
    assert (status["queued"], status["labelled"], status["quarantined"], status["test"]) == (3, 0, 1, 2)
    assert status["budget_spent"] == 3 and not (store / "labels").exists()

    # A changed label on re-import never overwrites, and is said on stderr with exit 1.
    ids = [line.split(",")[0] for line in Path(exported["files"]["csv"]).read_text().splitlines()[1:]]
    good, changed = tmp_path / "good.csv", tmp_path / "changed.csv"
    good.write_text("id,label\n" + "".join(f"{i},cat\n" for i in ids))
    changed.write_text(f"id,label\n{ids[0]},dog\n")
    code, _, err = run_cli(capsys, *base, "import-labels", exported["batch_id"], str(good), "--json")
    assert code == 0 and err == ""
    code, out, err = run_cli(capsys, *base, "import-labels", exported["batch_id"], str(changed), "--json")
    assert code == 1 and json.loads(out)["conflicts"] == [{"sample_id": ids[0], "imported": "cat", "offered": "dog"}]
    assert f"1 label conflicts with what was imported before and was not written: {ids[0]} is 'cat', the file says 'dog'" in err


@pytest.mark.usefixtures("prefect_harness")
def test_retrain_without_classes_says_how_to_set_them(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--store", str(tmp_path / "s"), "retrain")
    assert code == 2 and "data.classes must list at least 2 class names" in err


def test_core_modules_import_without_prefect():
    # Every module of the core package, found by walking it: a new one is checked too.
    code = (
        "import pkgutil, sys, activeflow.core, activeflow.settings, activeflow.parameters\n"
        "import activeflow.evaluation.simulation, activeflow.evaluation.demo_data\n"
        "import activeflow.evaluation.label_efficiency\n"
        "found = [m.name for m in pkgutil.walk_packages(activeflow.core.__path__, 'activeflow.core.')]\n"
        "for name in found: __import__(name)\n"
        "assert len(found) >= 20, found\n"  # it walked the packages
        "assert 'prefect' not in sys.modules, sorted(m for m in sys.modules if 'prefect' in m)[:5]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_commands_that_run_no_model_do_not_import_tensorflow():
    # TensorFlow costs several seconds of every command's start-up; ingest and a score-based
    # export never run a model.
    code = ("import sys\nimport activeflow.flows.ingest, activeflow.flows.export_batch, activeflow.cli\n"
            "assert not {'keras', 'tensorflow'} & set(sys.modules), 'TensorFlow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_split_without_labelled_is_refused_before_writing(tmp_path, capsys):
    write_labelled_tree(tmp_path / "test", {"cat": 1, "dog": 1})
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, "--store", str(store), "ingest", str(tmp_path / "test"), "--split", "test")
    assert code == 2 and out == ""
    assert "activeflow ingest: error: --split test needs --labelled" in err
    assert not store.exists()


def test_a_pool_image_ingested_again_as_a_test_image_exits_1_naming_it(tmp_path, capsys):
    write_image(tmp_path / "pool" / "a.png", 1)
    write_image(tmp_path / "test" / "cat" / "a.png", 1)
    store = str(tmp_path / "store")
    assert run_cli(capsys, "--store", store, "ingest", str(tmp_path / "pool"))[0] == 0

    code, out, err = run_cli(capsys, "--store", store, "ingest", str(tmp_path / "test"),
                             "--labelled", "--split", "test", "--json")

    assert code == 1
    assert json.loads(out)["new"] == 0
    assert err.strip() == (
        f"activeflow: warning: 1 image was not ingested: {tmp_path / 'test' / 'cat' / 'a.png'}: "
        "already in the store as a pool image (no label); left there, not added to the test split"
    )


def test_late_labels_beyond_the_total_budget_exit_1_saying_so(tmp_path, capsys, monkeypatch):
    from datetime import UTC, datetime, timedelta

    from activeflow.core.label.batches import export_batch, release_stale_batches
    from activeflow.core.storage.pool import load_state
    from activeflow.core.storage.store import LocalStore
    from activeflow.settings import load_settings

    for n in range(6):
        write_image(tmp_path / "in" / f"{n}.png", n)
    monkeypatch.setenv("ACTIVEFLOW_DATA__CLASSES", '["cat", "dog"]')
    monkeypatch.setenv("ACTIVEFLOW_BUDGET__TOTAL", "3")
    base = ["--store", str(tmp_path / "store")]
    assert run_cli(capsys, *base, "ingest", str(tmp_path / "in"))[0] == 0
    store = LocalStore(tmp_path / "store")
    settings = load_settings(storage={"uri": store.uri}, data={"classes": ["cat", "dog"]},
                             budget={"per_run": 3, "total": 3}, labelling={"release_after_hours": 1})
    first = export_batch(store, settings).batch_id
    release_stale_batches(store, load_state(store), settings, now=datetime.now(UTC) + timedelta(hours=2))
    second = export_batch(store, settings).batch_id  # spends the whole total again
    batches = load_state(store).batches
    late = tmp_path / "late.csv"
    late.write_text("id,label\n" + "".join(f"{i},cat\n" for i in batches[first].sample_ids))
    over = len(set(batches[first].sample_ids) - set(batches[second].sample_ids))

    code, out, err = run_cli(capsys, *base, "import-labels", first, str(late), "--json")

    assert code == 1 and json.loads(out)["imported"] == 0
    assert f"{over} late label(s) of the released batch {first} were not written: the total budget" in err


def test_without_json_commands_say_what_they_did_in_a_few_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ACTIVEFLOW_DATA__CLASSES", '["cat", "dog"]')
    for n in range(4):
        write_image(tmp_path / "in" / f"{n}.png", n)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG nope")
    base = ["--store", str(tmp_path / "store")]

    code, out, _ = run_cli(capsys, *base, "ingest", str(tmp_path / "in"))
    assert code == 0 and out.splitlines() == [
        "ingested 4 new images into the pool (0 already in the store, 1 quarantined)",
        "  quarantined:",
        f"    {tmp_path / 'in' / 'broken.png'}: not an image PIL can identify",
    ]

    code, out, _ = run_cli(capsys, *base, "export-batch", "--budget", "2")
    lines = out.splitlines()
    batch_id = lines[0].split()[1].rstrip(":")
    assert lines[0] == f"batch {batch_id}: 2 samples (random-cold-start: 2 of budget 2)"
    assert lines[-1] == f"next: label it, then `activeflow import-labels {batch_id} <export>`"

    csv_file = Path(next(line.split()[1] for line in lines if line.strip().startswith("csv")))
    first = csv_file.read_text().splitlines()[1].split(",")[0]
    answers = tmp_path / "answers.csv"
    answers.write_text(f"id,label\n{first},cat\n")
    code, out, _ = run_cli(capsys, *base, "import-labels", batch_id, str(answers))
    assert out.splitlines()[0] == (
        f"batch {batch_id}: imported 1 new label from {answers} (0 imported before); 1 still waiting for a label")

    code, out, _ = run_cli(capsys, *base, "status")
    assert out.splitlines() == [
        "pool      2 unlabelled, 1 queued in batches, 1 labelled",
        "test set  0 images",
        "budget    2 labels spent (no budget.total set)",
        "champion  none yet (run `activeflow retrain` on labelled images)",
        "quarantine  1 input could not be read (see quarantine/ in the store)",
    ]


def test_status_of_a_store_that_does_not_exist_is_an_error(tmp_path, capsys):
    code, out, err = run_cli(capsys, "--store", str(tmp_path / "typo"), "status")
    assert code == 2 and out == ""
    assert f"activeflow status: error: no store at {tmp_path / 'typo'}" in err
    assert not (tmp_path / "typo").exists()


def test_global_options_work_after_the_command_too(tmp_path, capsys):
    (tmp_path / "store").mkdir()
    code, out, _ = run_cli(capsys, "status", "--store", str(tmp_path / "store"), "--json")
    assert code == 0 and json.loads(out)["champion"] is None
    # Given before the command and not after, it stays.
    code, _, err = run_cli(capsys, "--store", str(tmp_path / "typo"), "status")
    assert code == 2 and f"no store at {tmp_path / 'typo'}" in err


def test_a_temporary_prefect_server_that_does_not_start_is_a_clear_error(tmp_path):
    """Prefect's own default gives its temporary server 20 s, too little on a busy 2-core
    machine; the CLI gives it 120 s, and when even that is not enough says what to do
    instead of a traceback (here: a 0 s limit, so it cannot start in time)."""
    for n in range(2):
        write_image(tmp_path / "in" / f"{n}.png", n)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0")
    result = subprocess.run(
        [Path(sys.executable).parent / "activeflow", "--store", str(tmp_path / "store"), "ingest",
         str(tmp_path / "in")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "activeflow ingest: error: Prefect's temporary server did not start within 0 s" in result.stderr
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in result.stderr
    assert "PREFECT_API_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "store").exists()


def test_the_demo_starts_the_temporary_server_early_and_still_says_when_it_did_not(tmp_path):
    # The demo starts Prefect's temporary server in a thread while TensorFlow loads: a start
    # that fails there is the same one-line error, and leaves no server behind.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0")
    result = subprocess.run(
        [Path(sys.executable).parent / "activeflow", "demo", "--out", str(tmp_path / "demo")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 2 and result.stdout == ""
    first, second = result.stderr.splitlines()
    assert first.startswith("activeflow demo: margin against random side by side")
    assert second.startswith("activeflow demo: error: Prefect's temporary server did not start within 0 s")
    assert not (tmp_path / "demo" / "stores").exists()
    assert not processes_with(str(tmp_path / "prefect-home"))


def test_a_prefect_setting_it_cannot_parse_is_one_line_naming_it(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0.5")
    result = subprocess.run(
        [Path(sys.executable).parent / "activeflow", "--store", str(tmp_path / "store"), "ingest",
         str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("activeflow ingest: error: invalid Prefect settings (ServerEphemeralSettings: "
                           "startup_timeout_seconds: Input should be a valid integer")
    assert "PREFECT_*" in last
    assert not (tmp_path / "store").exists()


def test_an_expected_failure_is_one_line_and_verbose_brings_prefect_logs_back(tmp_path):
    """Prefect's per-task logs and its traceback stay off the terminal; -v shows them."""
    missing = tmp_path / "no-such-folder"
    command = [Path(sys.executable).parent / "activeflow", "--store", str(tmp_path / "store"), "ingest", str(missing)]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert (quiet.returncode, quiet.stdout) == (2, "")
    assert quiet.stderr == f"activeflow ingest: error: source folder {missing} does not exist\n"

    loud = subprocess.run([*command, "-v"], capture_output=True, text=True, timeout=300)
    assert loud.returncode == 2 and "Beginning flow run" in loud.stderr and "Traceback" in loud.stderr
    assert f"activeflow ingest: error: source folder {missing} does not exist\n" in loud.stderr
    assert not (tmp_path / "store" / "catalog").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="finds leftover processes through /proc")
def test_sigterm_stops_a_command_and_its_temporary_server(tmp_path):
    """A command sent SIGTERM (by `timeout`, systemd, Kubernetes) while its temporary
    Prefect server starts exits promptly, says so, and leaves no server behind."""
    for n in range(3):
        write_image(tmp_path / "in" / f"{n}.png", n)
    home = tmp_path / "prefect-home-sigterm"
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(home)
    command = subprocess.Popen(
        [Path(sys.executable).parent / "activeflow", "-v", "--store", str(tmp_path / "store"), "ingest",
         str(tmp_path / "in")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        for line in command.stderr:  # until the temporary server is on its way up
            if "Starting temporary server" in line:
                break
        command.send_signal(signal.SIGTERM)
        _, err = command.communicate(timeout=60)
    finally:
        command.kill()
    assert command.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "activeflow ingest: stopped by SIGTERM" in err and "Traceback" not in err
    deadline = time.monotonic() + 30
    while processes_with(str(home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_with(str(home)) == []


@pytest.mark.parametrize("argv", [
    ["demo", "--rounds", "0"], ["demo", "--budget", "0"], ["benchmark", "--rounds", "0"],
    ["benchmark", "--seeds", "0"], ["benchmark", "--budget", "-1"], ["benchmark", "--workers", "0"],
    ["benchmark", "--seed-per-class", "0"], ["cycle", "--rounds", "0"],
])
def test_counts_below_one_are_refused_before_anything_is_written(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, *(["--out", "out"] if argv[0] != "cycle" else [])])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert f"argument {argv[1]}: must be a whole number of at least 1, not {argv[2]!r}" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_the_demo_command_says_what_it_does_then_shows_only_its_rounds(tmp_path):
    # As a user runs it, in a process of its own (here on the session's Prefect server, and
    # with a short recipe): the up-front line, one line a round per strategy, the table.
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "ACTIVEFLOW_MODEL__MIN_STEPS": "20"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "activeflow"), "demo", "--rounds", "1", "--budget", "10",
         "--out", str(tmp_path / "demo")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("activeflow demo: margin against random side by side, 1 rounds of 10 labels "
                               "each at 8 px; about ")
    assert "Prefect's logs are in " in lines[0]
    assert sorted(line.split(":")[0] for line in lines[1:]) == [
        "margin   round 0", "margin   round 1", "random   round 0", "random   round 1"
    ]  # nothing else: no TensorFlow start-up lines, no Prefect task logs
    assert done.stdout.splitlines()[0].split() == ["round", "margin", "labels", "margin", "acc", "random",
                                                   "labels", "random", "acc"]
    assert (tmp_path / "demo" / "report.json").is_file() and (tmp_path / "demo" / "activeflow.log").is_file()
