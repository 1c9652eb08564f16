"""A process that imports activeflow (TensorFlow included) once and forks one child per
operation, so that many kill -9 trials each cost the operation, not the imports.

Protocol, one JSON line each way: the test writes ``{"op": ..., "settings": {...}, ...}``;
the zygote answers ``{"pid": N}`` once the child runs, then ``{"status": S}`` with the
child's wait status when it ends (killed or not). Forking is safe here because this
process never runs a TensorFlow op itself: each child starts TensorFlow's threads anew.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

from activeflow.core.ingest.ingest import ingest_images
from activeflow.core.ingest.sources import iter_source
from activeflow.core.label import batches, label_import  # noqa: F401 (preload)
from activeflow.core.score import modeling, scoring
from activeflow.core.storage.pool import load_state
from activeflow.core.storage.store import open_store
from activeflow.core.train import training
from activeflow.settings import load_settings


def run(request: dict[str, Any]) -> None:
    settings = load_settings(**request["settings"])
    store = open_store(settings.storage)
    op = request["op"]
    if op == "ingest":
        labelled = request.get("split", "pool") != "pool"
        ingest_images(store, iter_source(request["source"], labelled=labelled),
                      split=request.get("split", "pool"), classes=settings.data.classes)
    elif op == "export":
        batches.export_batch(store, settings, request["request_id"])
    elif op == "import":
        with open(request["file"], "rb") as handle:
            content = handle.read()
        label_import.import_labels(store, load_state(store), settings, request["batch_id"],
                                   request["file"], content)
    elif op == "score":
        scoring.score_pool(store, settings)
    elif op == "retrain":
        training.retrain(store, settings)
    else:
        raise ValueError(f"unknown operation {op!r}")


def main() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.dup2(2, 1)  # stdout is the protocol's: the child's prints go to stderr
            code = 0
            try:
                run(request)
            except BaseException:  # noqa: BLE001 - reported, then the child ends
                traceback.print_exc()
                code = 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status}), flush=True)


if __name__ == "__main__":
    main()
