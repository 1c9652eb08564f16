"""The label-efficiency benchmark's arithmetic on hand-made curves, its data split, and its report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from images import write_labelled_tree
from PIL import Image

from activeflow.core.ingest.sources import SourceImage, iter_source
from activeflow.evaluation import label_efficiency as le
from activeflow.evaluation import prepare_output_folder


def test_area_under_curve_is_the_mean_accuracy_over_the_label_span():
    # Trapezoids: (0.5 + 0.7) / 2 * 20 + (0.7 + 0.9) / 2 * 20 = 12 + 16 = 28 over 40 labels.
    assert le.area_under_curve([20, 40, 60], [0.5, 0.7, 0.9]) == pytest.approx(0.7)
    assert le.area_under_curve([20, 40, 80], [0.6, 0.6, 0.6]) == pytest.approx(0.6)
    # Uneven spacing weighs by labels: (0.5 + 0.9) / 2 * 10 + 0.9 * 30 = 34 over 40.
    assert le.area_under_curve([0, 10, 40], [0.5, 0.9, 0.9]) == pytest.approx(0.85)
    assert le.area_under_curve([20], [0.42]) == 0.42


def test_area_under_curve_refuses_bad_curves():
    with pytest.raises(ValueError, match="increase strictly"):
        le.area_under_curve([20, 20], [0.5, 0.6])
    with pytest.raises(ValueError, match="one length"):
        le.area_under_curve([20, 40], [0.5])


def test_labels_to_reach_interpolates_the_first_crossing():
    labels, accuracy = [20, 40, 60, 80], [0.6, 0.8, 0.75, 0.9]
    assert le.labels_to_reach(labels, accuracy, 0.7) == pytest.approx(30.0)
    assert le.labels_to_reach(labels, accuracy, 0.8) == pytest.approx(40.0)
    assert le.labels_to_reach(labels, accuracy, 0.85) == pytest.approx(60 + 20 * 0.1 / 0.15)  # after the dip
    assert le.labels_to_reach(labels, accuracy, 0.5) == 20.0  # already there at the start
    assert le.labels_to_reach(labels, accuracy, 0.95) is None


def test_labels_to_reach_counts_a_mean_equal_but_for_float_rounding():
    # Random's five seeds on 600 ten-shape test images: 2997 of 3000 right at 160 labels and
    # at 180, but the means differ in the last bit, and 160 was counted as short of 180's.
    at_160 = np.mean([599 / 600, 1.0, 1.0, 599 / 600, 599 / 600])
    final = np.mean([1.0, 1.0, 1.0, 598 / 600, 599 / 600])
    assert at_160 < final
    assert le.labels_to_reach([140, 160, 180], [0.99, at_160, final], final) == 160.0


def _records(strategy, curves):
    """RoundRecords for one strategy: ``curves`` maps seed -> accuracies at 20, 40, ... labels."""
    return [
        le.RoundRecord(
            strategy=strategy, seed=seed, round=r, labels=20 * (r + 1), accuracy=acc,
            promoted=True, seconds=1.0, stop=(strategy == "margin" and r == 2),
            pool_estimate=0.5 if r else None, pool_estimate_items=2 if r else 0,
        )
        for seed, accuracies in curves.items()
        for r, acc in enumerate(accuracies)
    ]


@pytest.fixture
def records():
    return (
        _records("random", {0: [0.5, 0.6, 0.7, 0.8], 1: [0.5, 0.6, 0.7, 0.8]})
        + _records("margin", {0: [0.5, 0.8, 0.85, 0.9], 1: [0.5, 0.7, 0.85, 0.9]})
        + _records("coreset", {0: [0.5, 0.55, 0.6, 0.7], 1: [0.5, 0.6, 0.7, 0.75]})
    )


def test_summary_compares_every_strategy_with_random(records):
    summary = le.summarise(records)
    by_name = {s.strategy: s for s in summary.strategies}
    assert list(by_name) == ["random", "coreset", "margin"]

    random, margin, coreset = by_name["random"], by_name["margin"], by_name["coreset"]
    assert random.curve.labels == [20, 40, 60, 80] and random.curve.mean == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert random.aulc_mean == pytest.approx(0.65) and random.labels_to_reach_random_final == 80
    # margin's mean curve: 0.5, 0.75, 0.85, 0.9; it passes 0.8 half-way between 40 and 60 labels.
    assert margin.curve.mean == pytest.approx([0.5, 0.75, 0.85, 0.9])
    assert margin.curve.sd[1] == pytest.approx(0.0707, abs=1e-4)
    assert margin.labels_to_reach_random_final == pytest.approx(50.0)
    assert margin.label_saving_vs_random == pytest.approx(1 - 50 / 80)
    assert margin.label_saving_vs_random_spent == pytest.approx(1 - 50 / 80)  # random peaks last
    assert margin.aulc_vs_random > 0 and margin.aulc_seeds_at_or_above_random == 2
    assert margin.stop_labels_mean == 60 and margin.stop_seeds == 2
    assert margin.pool_estimate_mean == 0.5 and margin.pool_estimate_items == 12
    assert coreset.labels_to_reach_random_final is None and coreset.aulc_vs_random < 0

    target = summary.target
    assert target.best_strategy == "margin" and target.best_label_saving == pytest.approx(0.375)
    assert not target.best_saves_half
    assert target.below_random_aulc == ["coreset"] and not target.every_aulc_at_or_above_random
    assert target.never_reach_random_final == ["coreset"]


def test_summary_needs_the_random_baseline(records):
    with pytest.raises(le.BenchmarkError, match="no random runs"):
        le.summarise([r for r in records if r.strategy != "random"])


def test_report_files(records, tmp_path):
    config = le.BenchmarkConfig(strategies=["margin", "coreset"], seeds=2, rounds=3)
    files = le.write_benchmark_report(tmp_path, config, records)
    document = json.loads(files["json"].read_text())
    assert len(document["records"]) == 24
    assert {"strategy", "seed", "round", "labels", "accuracy"} <= set(document["records"][0])
    assert document["summary"]["target"]["best_strategy"] == "margin"
    assert files["learning_curve"].read_bytes().startswith(b"\x89PNG")
    table = files["table"].read_text()
    assert "| margin | 76.7 ± 2.4 | +11.7 | 2 | 90.0 ± 0.0 | 50 | 37.5 % (37.5 %) | 60 (2) |" in table
    assert "| coreset |" in table and "| never |" in table
    assert "misses the 50 % target" in table and "below random's mean AULC: coreset" in table


def test_config_always_runs_random_first_and_once():
    config = le.BenchmarkConfig(strategies=["margin", "random", "margin", "bald"])
    assert config.all_strategies == ["random", "margin", "bald"]
    with pytest.raises(ValueError, match="whole number of images"):
        le.BenchmarkConfig(test_size=1.5)


def test_seed_split_is_stratified_and_reproducible():
    images = [SourceImage(name=f"{c}{i}", data=bytes([i]), label=c) for c in "abc" for i in range(5)]
    seed_set, pool = le.seed_split(images, ["a", "b", "c"], seed=3, seed_per_class=2)
    assert sorted(i.label for i in seed_set) == ["a", "a", "b", "b", "c", "c"]
    assert len(pool) == 9 and not {i.name for i in seed_set} & {i.name for i in pool}
    assert le.seed_split(images, ["a", "b", "c"], seed=3, seed_per_class=2)[0] == seed_set
    assert le.seed_split(images, ["a", "b", "c"], seed=4, seed_per_class=2)[0] != seed_set
    _, small = le.seed_split(images, ["a", "b", "c"], seed=3, seed_per_class=2, pool_size=4)
    assert len(small) == 4 and set(i.name for i in small) <= {i.name for i in pool}
    with pytest.raises(le.BenchmarkError, match="class 'a' has 5 images outside the test set"):
        le.seed_split(images, ["a", "b", "c"], seed=0, seed_per_class=5)


def test_a_labelled_folder_is_split_into_test_and_rest_by_class(tmp_path):
    write_labelled_tree(tmp_path / "in", {"cat": 10, "dog": 10})
    data = le.prepare_dataset(tmp_path / "data", str(tmp_path / "in"), test_size=0.2)
    assert data.classes == ["cat", "dog"] and (data.test_count, data.rest_count) == (4, 16)
    test = [image.label for image in iter_source(data.test, labelled=True)]
    assert sorted(test) == ["cat", "cat", "dog", "dog"]
    rest = {image.data for image in iter_source(data.rest, labelled=True)}
    assert not rest & {image.data for image in iter_source(data.test, labelled=True)}


def test_a_folder_of_one_class_is_refused(tmp_path):
    write_labelled_tree(tmp_path / "in", {"cat": 4})
    with pytest.raises(le.BenchmarkError, match="at least 2 classes"):
        le.prepare_dataset(tmp_path / "data", str(tmp_path / "in"))


def test_out_folder_not_made_by_the_benchmark_is_refused(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="was not made by `activeflow benchmark`"):
        prepare_output_folder(tmp_path, "benchmark")
    assert [p.name for p in tmp_path.iterdir()] == ["precious.txt"]
    fresh = tmp_path / "bench"
    prepare_output_folder(fresh, "benchmark")
    (fresh / "stores").mkdir()
    with pytest.raises(FileExistsError, match="was not made by `activeflow demo`"):
        prepare_output_folder(fresh, "demo")  # a benchmark's folder is not the demo's
    prepare_output_folder(fresh, "benchmark")  # made by the benchmark: emptied again
    assert not (fresh / "stores").exists()


def test_the_benchmark_and_selection_core_import_no_prefect():
    import subprocess
    import sys

    code = "import sys, activeflow.evaluation.label_efficiency, activeflow.core.score.selection; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_saving_is_measured_against_where_random_first_reaches_its_final_accuracy():
    # Random touches its final 0.8 at 60 labels, dips, and ends at 0.8 again after 100.
    records = _records("random", {0: [0.5, 0.6, 0.8, 0.7, 0.8]}) + _records("margin", {0: [0.5, 0.8, 0.9, 0.9, 0.9]})
    margin = next(s for s in le.summarise(records).strategies if s.strategy == "margin")
    assert margin.labels_to_reach_random_final == 40
    assert margin.label_saving_vs_random == pytest.approx(1 - 40 / 60)  # the conservative one
    assert margin.label_saving_vs_random_spent == pytest.approx(1 - 40 / 100)


def test_the_report_shows_the_pixel_baseline_and_the_seed_model_against_chance():
    records = [
        le.RoundRecord(
            strategy=strategy, seed=seed, round=r, labels=20 * (r + 1), accuracy=acc,
            baseline_accuracy=base, chance_accuracy=0.1, promoted=True, seconds=1.0,
        )
        for strategy, curve in (("random", [0.4, 0.6, 0.8]), ("margin", [0.4, 0.7, 0.9]))
        for seed in (0, 1)
        for r, (acc, base) in enumerate(zip(curve, [0.3, 0.5, 0.6], strict=True))
    ]
    summary = le.summarise(records)
    assert summary.baseline.curve.mean == pytest.approx([0.3, 0.5, 0.6])
    assert summary.baseline.final_mean == pytest.approx(0.6)
    assert summary.baseline.aulc_mean == pytest.approx((0.4 * 20 + 0.55 * 20) / 40)
    target = summary.target
    assert (target.chance, target.seed_labels, target.random_at_seed_labels) == pytest.approx((0.1, 20, 0.4))
    assert target.seed_model_at_least_twice_chance
    table = le.markdown_table(summary)
    assert "| baseline: logistic regression on 16x16 pixels, on random's labels | 47.5 | - | - | 60.0 |" in table
    assert "With the seed set's 20 labels random's model scores 40.0 %, 4.0x chance (10.0 %)." in table


def test_synthetic_shapes_are_split_like_any_labelled_folder(tmp_path):
    data = le.prepare_dataset(tmp_path, "shapes:3", test_size=0.2)
    assert data.classes == ["circle", "square", "triangle"]
    assert (data.test_count, data.rest_count) == (180, 720)  # 300 a class
    sizes = {image.data[16:24] for image in iter_source(data.test, labelled=True)}
    assert len(sizes) == 1  # every PNG is 64 x 64: one IHDR width/height


def test_rotated_shapes_differ_from_upright_ones_only_in_their_angle(tmp_path):
    from activeflow.evaluation.synthetic_shapes import write_shapes

    write_shapes(tmp_path / "upright", classes=2, per_class=3)
    write_shapes(tmp_path / "rotated", classes=2, per_class=3, rotate=True)

    def pixels(folder, shape):
        return [np.asarray(Image.open(f)) for f in sorted((tmp_path / folder / shape).iterdir())]

    # A circle looks the same at any angle; a square does not.
    assert all(np.array_equal(a, b) for a, b in zip(pixels("upright", "circle"), pixels("rotated", "circle")))
    assert not any(np.array_equal(a, b) for a, b in zip(pixels("upright", "square"), pixels("rotated", "square")))


@pytest.mark.parametrize(("dataset", "message"), [
    ("shapes:x", "write shapes:N with N the number of classes"),
    ("shapes-rotated:", "write shapes-rotated:N with N the number of classes"),
    ("shapes:1", "synthetic shapes come in 2 to 10 classes, not 1"),
    ("shapes:11", "synthetic shapes come in 2 to 10 classes, not 11"),
])
def test_a_bad_shapes_dataset_is_refused_before_writing(tmp_path, dataset, message):
    with pytest.raises(le.BenchmarkError, match=message):
        le.prepare_dataset(tmp_path / "data", dataset)
    assert not any((tmp_path / "data").rglob("*.png"))
