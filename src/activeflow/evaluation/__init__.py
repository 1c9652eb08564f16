"""The evaluation harness: label-efficiency benchmarks, simulated labellers and the
data they run on (scikit-learn digits, synthetic shapes). Nothing in the pipeline
needs it but ``cycle --simulate``, ``demo`` and ``benchmark``."""

from __future__ import annotations

import shutil
from pathlib import Path


def prepare_output_folder(out: Path, command: str) -> None:
    """Start a ``demo`` or ``benchmark`` afresh in ``out``: empty a folder an earlier run of
    ``command`` made (its data/ and stores/), refuse any other non-empty folder."""
    marker = out / f".activeflow-{command}"
    if out.exists() and any(out.iterdir()):
        if not marker.is_file():
            raise FileExistsError(f"{out} exists and was not made by `activeflow {command}`; pick another --out")
        for part in ("data", "stores"):
            shutil.rmtree(out / part, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"made by activeflow {command}; its data/ and stores/ are replaced on each run\n")
