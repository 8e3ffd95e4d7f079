"""Evaluation at benchmark scale: worker pool equals the sequential path (started only for work that
repays it, then reused), the suite's tables and files, outputs checked before any compute, progress
lines in a log."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import srcore.evaluation.dataset
import srcore.evaluation.pool
from srcore.cli import app
from srcore.errors import DataError
from srcore.evaluation import ModelEntry, evaluate_dataset, expand_datasets, run_suite
from srcore.evaluation.pool import running_pool, shared_pool, shutdown_pool
from srcore.models import build, save_model

runner = CliRunner()


def _dataset(root, name="Mine", count=3, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / name / "HR"
    folder.mkdir(parents=True)
    for i in range(count):
        img = rng.integers(0, 256, size=(36 + 4 * i, 40, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"im{i}.png")
    return root


@pytest.fixture
def no_pool():
    shutdown_pool()
    yield
    shutdown_pool()


def _worker_env(model, name):
    """Runs in a pool worker: its pid and one of its environment variables."""
    return os.getpid(), os.environ.get(name)


def test_few_images_are_scored_in_this_process(tmp_path, monkeypatch, no_pool):
    def no_workers(*a, **k):
        raise AssertionError("a pool was started for three small images")

    monkeypatch.setattr(srcore.evaluation.pool, "ModelPool", no_workers)
    root = _dataset(tmp_path)
    model = build("rlfn", 2, feature_channels=8, mid_channels=8, esa_channels=4)
    pooled = evaluate_dataset(model, "Mine", 2, root, workers=2)
    assert pooled.per_image == evaluate_dataset(model, "Mine", 2, root, workers=1).per_image


def test_a_folder_of_hr_images_is_a_dataset_cached_and_saved_outside_it(tmp_path, monkeypatch):
    """A dataset given by path (a run's own validation set): scored like the same images under a
    name, its LR cache and saved images under a label of its own, nothing written into the folder;
    a path that is no folder is refused by name."""
    from srcore.data.benchmarks import dataset_label

    monkeypatch.setenv("SRCORE_CACHE", str(tmp_path / "cache"))
    root = _dataset(tmp_path / "named")
    folder = root / "Mine" / "HR"
    before = sorted(folder.rglob("*"))
    model = build("rlfn", 2, feature_channels=8, mid_channels=8, esa_channels=4)
    by_path = evaluate_dataset(model, str(folder), 2, workers=1, save_dir=tmp_path / "saved")
    assert by_path.per_image == evaluate_dataset(model, "Mine", 2, root, workers=1).per_image
    assert sorted(folder.rglob("*")) == before
    label = dataset_label(str(folder))
    assert label.startswith("HR-") and label != dataset_label(str(tmp_path / "elsewhere" / "HR"))
    assert len(list((tmp_path / "cache" / label / "x2").glob("*.png"))) == 3
    assert len(list((tmp_path / "saved" / label).glob("*_x2.png"))) == 3
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        evaluate_dataset(model, str(tmp_path / "nowhere"), 2, workers=1)


@pytest.mark.slow  # starts two interpreters that import torch (spawn)
def test_worker_pool_gives_the_sequential_result_and_is_reused(tmp_path, monkeypatch, no_pool):
    root = _dataset(tmp_path)
    models = [build("rlfn", 2, feature_channels=8, mid_channels=8, esa_channels=4) for _ in range(2)]
    sequential = [evaluate_dataset(m, "Mine", 2, root, workers=1) for m in models]
    threads = torch.get_num_threads()
    # Work that repays a pool: the first two images here, the last one by a pool started for it.
    monkeypatch.setattr(srcore.evaluation.dataset, "POOL_START_S", 0.0)
    mixed = evaluate_dataset(models[0], "Mine", 2, root, workers=2)
    pool = running_pool(2, threads)
    assert pool is not None
    # A running pool scores every image, for every model it is given.
    pooled = [evaluate_dataset(m, "Mine", 2, root, workers=2) for m in models]
    assert shared_pool(2, threads) is pool
    assert list(pooled[0].per_image) == list(sequential[0].per_image) == ["im0", "im1", "im2"]
    assert mixed.per_image == pooled[0].per_image == sequential[0].per_image
    assert pooled[1].per_image == sequential[1].per_image != sequential[0].per_image
    assert (pooled[0].psnr_y, pooled[0].ssim_y) == (sequential[0].psnr_y, sequential[0].ssim_y)
    # Idle OpenMP threads of a worker sleep: workers x threads exceed the cores.
    seen = pool.map(_worker_env, models[0], ["OMP_WAIT_POLICY"] * 4)
    assert {policy for _, policy in seen} == {os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    assert os.getpid() not in {pid for pid, _ in seen}


def test_suite_tables_over_scales_with_a_missing_dataset(tmp_path):
    root = _dataset(tmp_path)
    seen = []
    entry = ModelEntry("bicubic", lambda s: build("bicubic", s))
    result = run_suite([entry], ["Mine", "Set14"], [2, 3], root,
                       on_image=lambda d, n, done, count: seen.append((d, done, count)))
    assert result.missing == ["Set14"] and result.datasets == ["Mine"]
    assert sorted(result.tables) == [2, 3]
    row = result.tables[3][0]
    assert row.arch == "bicubic" and row.params == 0 and set(row.results) == {"Mine"}
    assert row.results["Mine"].images == 3 and len(row.results["Mine"].per_image) == 3
    assert seen[-1] == ("Mine", 3, 3) and len(seen) == 6
    md = result.to_markdown()
    assert "### x2" in md and "### x3" in md and "Missing datasets (not evaluated): Set14" in md
    assert len(result.to_csv().strip().splitlines()) == 1 + 2
    assert result.as_dict()["tables"]["x2"][0]["results"]["Mine"]["per_image"]["im0"]["psnr_y"] > 10


def test_standard_suite_expands_in_order():
    expected = ["Set5", "Set14", "B100", "Urban100", "Manga109", "embedded"]
    assert expand_datasets(["standard", "Set5", "embedded"]) == expected


def test_cli_suite_writes_json_csv_markdown_and_logs_progress(tmp_path):
    root = _dataset(tmp_path / "root", "Set5", count=2)
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "--suite", "standard", "--scale", "2", "--scale", "4", "--data-root",
                                 str(root), "--json", str(out / "r.json"), "--csv", str(out / "r.csv"),
                                 "--markdown", str(out / "r.md")])
    assert result.exit_code == 0, result.output
    assert result.output.count("missing datasets") == 1
    assert "Set14, B100, Urban100, Manga109" in result.output
    assert "Set5: 4/4 images" in result.output and "ETA" in result.output  # not a TTY: log lines
    payload = json.loads((out / "r.json").read_text())
    assert set(payload["tables"]) == {"x2", "x4"} and payload["missing_datasets"][0] == "Set14"
    assert (out / "r.md").read_text().startswith("### x2")
    assert len((out / "r.csv").read_text().splitlines()) == 3


@pytest.mark.parametrize("flag", ["--json", "--csv", "--markdown", "--save-images"])
def test_cli_refuses_bad_outputs_before_any_compute(tmp_path, monkeypatch, flag):
    import srcore.evaluation

    def boom(*a, **k):
        raise AssertionError("evaluation ran before the output check")

    monkeypatch.setattr(srcore.evaluation, "run_suite", boom)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "sub" / "out"
    result = runner.invoke(app, ["eval", "--dataset", "embedded", flag, str(target)])
    assert result.exit_code != 0
    assert str(blocker) in result.output and "Traceback" not in result.output


def test_cli_titles_a_checkpoint_with_its_architecture(tmp_path):
    path = tmp_path / "tiny.pth"
    save_model(path, build("rlfn", 2, feature_channels=8, mid_channels=8, esa_channels=4), "rlfn")
    root = _dataset(tmp_path / "root", "Set5", count=2)
    result = runner.invoke(app, ["eval", "--weights", str(path), "--data-root", str(root), "--scale", "2",
                                 "--json", "-"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    assert payload["model"].startswith("rlfn") and "bicubic" not in payload["model"]
    assert payload["tables"]["x2"][0]["arch"] == "rlfn"
