"""The benchmark flow end to end on a tiny configuration, and what a simulated cycle round now
reports (the random slice's pool estimate and the stopping signal), through Prefect."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activeflow.evaluation.demo_data import write_digits
from activeflow.flows.benchmark import benchmark_flow
from activeflow.flows.cycle import cycle_flow
from activeflow.flows.ingest import ingest_flow
from activeflow.flows.retrain import retrain_flow
from activeflow.settings import load_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")

TINY_MODEL = {"image_size": 8, "head_epochs": 1, "finetune_epochs": 0, "batch_size": 64, "min_steps": 60, "baseline_tolerance": 1.0}


def test_benchmark_flow_runs_every_strategy_and_seed_and_writes_the_report(tmp_path):
    out = tmp_path / "bench"
    settings = load_settings(model=TINY_MODEL, strategy={"mc_passes": 3})

    result = benchmark_flow(
        settings, out=str(out), strategies=["coreset"], seeds=2, rounds=2, budget=5,
        test_size=40, pool_size=60,
    )

    document = json.loads(Path(result.files["json"]).read_text())
    runs = {(r["strategy"], r["seed"]) for r in document["records"]}
    assert runs == {("random", 0), ("random", 1), ("coreset", 0), ("coreset", 1)}
    for strategy, seed in runs:
        curve = [r for r in document["records"] if (r["strategy"], r["seed"]) == (strategy, seed)]
        assert [r["round"] for r in curve] == [0, 1, 2]
        assert [r["labels"] for r in curve] == [20, 25, 30]  # 2 seeds per class, then 5 a round
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in curve)
        assert curve[2]["agreement"] is not None and curve[2]["slope"] is not None
    assert [s.strategy for s in result.summary.strategies] == ["random", "coreset"]
    assert "| coreset |" in result.table and "Targets:" in result.table
    assert Path(result.files["learning_curve"]).read_bytes().startswith(b"\x89PNG")
    assert Path(result.files["table"]).read_text() == result.table
    # Each run had its own store.
    assert sorted(p.name for p in (out / "stores" / "coreset").iterdir()) == ["seed-0", "seed-1"]


def test_benchmark_flow_refuses_an_unknown_strategy_before_writing(tmp_path):
    with pytest.raises(Exception, match="strategies"):
        benchmark_flow(load_settings(model=TINY_MODEL), out=str(tmp_path / "b"), strategies=["oracle"])
    assert not (tmp_path / "b").exists()


def test_a_simulated_round_reports_the_pool_estimate_and_the_stopping_signal(tmp_path):
    digits = write_digits(tmp_path / "digits", arrivals=4, test_size=60)  # arrival 2: ~280 images
    settings = load_settings(
        storage={"uri": str(tmp_path / "store")}, data={"classes": digits.classes},
        model=TINY_MODEL, budget={"per_run": 10},
        strategy={"name": "class-balanced", "random_fraction": 0.3},
    )
    ingest_flow(str(digits.test), split="test", settings=settings)
    ingest_flow(str(digits.seed), split="train", settings=settings)
    ingest_flow(str(digits.arrivals[1]), settings=settings)
    retrain_flow(settings)

    rounds = cycle_flow(settings, simulate=True, oracle=str(digits.truth), rounds=2)

    first, second = rounds
    assert first.pool_estimate.random_slice == 3 and first.pool_estimate.answered == 3
    assert first.pool_estimate.accuracy is not None and first.pool_estimate.test_accuracy is not None
    assert first.pool_estimate.model_version == first.stopping.models[0]
    # The stop sample is the whole unlabelled pool when it holds fewer than 500.
    pool_left = len(list(digits.arrivals[1].iterdir())) - 2 * 10
    assert first.stopping.agreement is not None and second.stopping.agreement_sample == pool_left
    assert second.stopping.slope is not None and second.stopping.slope_labels == [20, 30, 40]
    assert second.stopping.summary.startswith(("Further labels", "Keep labelling"))


def test_benchmark_flow_on_synthetic_shapes_reports_the_baseline(tmp_path):
    result = benchmark_flow(
        load_settings(model=TINY_MODEL), out=str(tmp_path / "bench"), strategies=["margin"],
        seeds=1, rounds=1, budget=6, dataset="shapes:3", test_size=30, seed_per_class=2, pool_size=30,
    )
    assert result.summary.baseline is not None and len(result.summary.baseline.curve.mean) == 2
    assert result.summary.target.chance == pytest.approx(1 / 3)
    assert "| baseline: logistic regression on 16x16 pixels, on random's labels |" in result.table


def test_a_benchmark_run_goes_on_when_no_candidate_is_promoted(tmp_path):
    """A model at chance is refused; the run's batches are then random cold starts."""
    never = {**TINY_MODEL, "min_steps": 1, "baseline_tolerance": 0.0}
    result = benchmark_flow(
        load_settings(model=never), out=str(tmp_path / "bench"), strategies=["margin"],
        seeds=1, rounds=2, budget=5, test_size=40, pool_size=40,
    )
    document = json.loads(Path(result.files["json"]).read_text())
    assert [r["round"] for r in document["records"] if r["strategy"] == "margin"] == [0, 1, 2]
    assert not any(r["promoted"] for r in document["records"])
