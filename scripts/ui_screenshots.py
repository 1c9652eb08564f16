"""Browser check of the Prefect UI: serve the deployments against a real `prefect server
start`, run import-and-retrain and ingest-score-export once on the bundled digits, and save
headless-Chromium screenshots of the deployments page and the runs' artifacts.

Needs Debian's chromium (`apt-get install chromium`). Writes PNGs under --out; commit none.

    python scripts/ui_screenshots.py [--out ui-screenshots]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the server helpers

from prefect_server import BIN, spawn, start_prefect_server, wait_for  # noqa: E402

from activeflow.core.ingest.ingest import ingest_images  # noqa: E402
from activeflow.core.ingest.sources import iter_source  # noqa: E402
from activeflow.core.label.batches import export_batch  # noqa: E402
from activeflow.core.storage.pool import load_state  # noqa: E402
from activeflow.core.storage.store import LocalStore  # noqa: E402
from activeflow.evaluation.demo_data import write_digits  # noqa: E402
from activeflow.evaluation.simulation import ground_truth  # noqa: E402
from activeflow.settings import load_settings  # noqa: E402


def prepare(root: Path) -> tuple[dict[str, str], str, Path]:
    """A store with a test set, seed labels, a pool and one exported batch, plus its answers."""
    digits = write_digits(root / "digits", arrivals=2, test_size=60)
    env = {
        "ACTIVEFLOW_STORAGE__URI": str(root / "store"),
        "ACTIVEFLOW_DATA__CLASSES": json.dumps(digits.classes),
        "ACTIVEFLOW_MODEL__IMAGE_SIZE": "8",
        "ACTIVEFLOW_MODEL__HEAD_EPOCHS": "8",
        "ACTIVEFLOW_MODEL__FINETUNE_EPOCHS": "2",
        "ACTIVEFLOW_BUDGET__PER_RUN": "20",
        "ACTIVEFLOW_BUDGET__TOTAL": "200",
        "ACTIVEFLOW_SCHEDULE__SOURCE": str(digits.arrivals[1]),
        "ACTIVEFLOW_SCORING__SHARD_SIZE": "200",
    }
    settings = load_settings(
        storage={"uri": str(root / "store")}, data={"classes": digits.classes}, budget={"per_run": 20}
    )
    store = LocalStore(root / "store")
    ingest_images(store, iter_source(str(digits.test), labelled=True), split="test")
    ingest_images(store, iter_source(str(digits.seed), labelled=True), split="train")
    ingest_images(store, iter_source(str(digits.arrivals[0]), labelled=False))
    batch_id = export_batch(store, settings).batch_id
    truth = ground_truth(digits.truth)
    answers = root / "export.csv"
    answers.write_text(
        "id,label\n"
        + "".join(f"{s},{truth[s]}\n" for s in load_state(store).batches[batch_id].sample_ids)
    )
    return env, batch_id, answers


def screenshot(url: str, path: Path) -> bool:
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         f"--screenshot={path}", "--window-size=1500,1100", "--virtual-time-budget=20000", url],
        check=False, capture_output=True, timeout=120,
    )
    return path.is_file()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("ui-screenshots"))
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        sys.exit("chromium not found: apt-get install chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        env, batch_id, answers = prepare(root)
        server = start_prefect_server(root / "home")
        (root / "work").mkdir()
        serve = spawn([str(BIN / "activeflow"), "serve"],
                      server.env(**env, PREFECT_RUNNER_POLL_FREQUENCY="1"),
                      root / "serve.log", cwd=root / "work")
        try:
            wait_for(lambda: len(server.post("/deployments/filter", {})) == 3, 120, "deployments")

            def run(flow: str, parameters: dict[str, str]) -> dict:
                deployment = server.deployment(flow, "activeflow")
                created = server.post(f"/deployments/{deployment['id']}/create_flow_run",
                                      {"parameters": parameters})
                return server.wait_for_run(created["id"])

            retrain = run("import-and-retrain", {"batch_id": batch_id, "labels_uri": str(answers)})
            export = run("ingest-score-export", {})
            print("runs:", retrain["state_type"], export["state_type"])
            import_deployment = server.deployment("import-and-retrain", "activeflow")["id"]
            pages = {"deployments": "/deployments",
                     "import-and-retrain-form": f"/deployments/deployment/{import_deployment}/run"}
            for run_, keys in ((export, ["batch-summary", "batch-samples"]),
                               (retrain, ["label-import", "model-metrics", "learning-curve-plot"])):
                artifacts = server.artifacts(run_["id"])
                pages |= {key: f"/artifacts/artifact/{artifacts[key]['id']}" for key in keys}
            for name, path in pages.items():
                print(name, screenshot(server.ui_url + path, args.out / f"{name}.png"))
        finally:
            serve.stop()
            server.stop()


if __name__ == "__main__":
    main()
