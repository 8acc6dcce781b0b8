"""`labelaudit fit`: run folders, folds, resume, PINT's loss pieces, errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from labelaudit.errors import ModelError, UsageError  # noqa: E402
from labelaudit.config import FitConfig, LoopParams, NetParams, PintParams  # noqa: E402
from labelaudit.train.fit import fit_dataset, split_folds  # noqa: E402
from labelaudit.train.loop import SliceSampler, augment_batch, load_checkpoint  # noqa: E402
from labelaudit.train.pint import (  # noqa: E402
    PintMethod, ema_decay, ema_update, pint_loss, pixel_threshold, roi_uncertainty)
from labelaudit.formats.run import load_run  # noqa: E402
from labelaudit.synth import SynthConfig, write_synth_dataset  # noqa: E402

#: 4 cases of 6 slices at 36x40 (not multiples of 16), 2 channels, 3 classes (background + 2).
DATA = SynthConfig(cases=4, size=(40, 36, 6), spacing=(0.8, 0.9, 3.0), classes=2, channels=2)
TINY_NET = NetParams(features=(4, 8, 8, 8, 8, 4), groups=4)
TINY_LOOP = LoopParams(epochs=2, iterations_per_epoch=2, batch_size=3)


def tiny_config(dataset: Path, out: Path, **changes) -> FitConfig:
    base = FitConfig(dataset=dataset, out=out, method="plain", folds=2, device="cpu", calibrate=False,
                     exporter="torchscript", loop=TINY_LOOP, net=TINY_NET)
    return replace(base, **changes)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synth_dataset(tmp_path_factory.mktemp("fitdata") / "Dataset002_Fit", DATA)


@pytest.fixture(scope="module")
def plain_run(dataset, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("plainrun")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        return fit_dataset(tiny_config(dataset, work / "run"))


# ----------------------------------------------------------------------------- run folders

def test_plain_fit_writes_a_complete_run_folder(plain_run, dataset):
    info = load_run(plain_run)
    assert info.method == "plain" and len(info.models) == 2
    assert info.dataset.path == str(dataset.resolve())
    assert list(info.dataset.cases) == ["case_000", "case_001", "case_002", "case_003"]
    assert info.dataset.fingerprint and info.dataset.layout == "nnunet"
    assert info.label_map.values == (0, 1, 2) and info.channel_names == ["CT", "CT"]
    assert set(info.versions) >= {"labelaudit", "torch", "onnx", "onnxruntime"}
    assert info.config["loop"]["epochs"] == 2 and info.config["net"]["features"] == [4, 8, 8, 8, 8, 4]
    assert info.status is None and info.device == "cpu"
    held = [set(m.held_out) for m in info.models]
    assert not held[0] & held[1] and held[0] | held[1] == set(info.dataset.cases)
    for fold, model in enumerate(info.models):
        assert model.fold == fold
        rows = info.log[f"fold_{fold}"]
        assert [r["epoch"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
        assert {"seconds", "lr", "ce", "dice_loss"} <= set(rows[0])
        assert model.export["opset"] == 18 and model.export["max_abs_diff"] < 1e-4
        assert (plain_run / model.weights).is_file() and (plain_run / model.segmenter).is_file()
    assert (plain_run.parent / "runs" / ".latest").read_text().strip() == str(plain_run.resolve())


def test_checkpoint_loads_with_weights_only(plain_run):
    state = torch.load(plain_run / "fold_0" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and "model" in state and "optimizer" in state and "torch" in state["rng"]


def test_onnx_matches_pytorch_on_a_new_shape(plain_run):
    import onnxruntime as ort

    from labelaudit.train.weights import build_fold_net
    from labelaudit.train.nets import PerturbedSegmenter
    from labelaudit.formats.run import perturbation_noise

    info = load_run(plain_run)
    net = build_fold_net(info, plain_run / info.models[1].weights)
    image = np.random.default_rng(1).normal(size=(2, 2, 64, 32)).astype(np.float32)
    noise = perturbation_noise(info.perturbations, 2, 64, 32)
    session = ort.InferenceSession(str(plain_run / info.models[1].segmenter), providers=["CPUExecutionProvider"])
    prob, unc = session.run(["prob_mean", "uncertainty"], {"image": image, "noise": noise})
    with torch.no_grad():
        want_prob, want_unc = PerturbedSegmenter(net, 3)(torch.from_numpy(image), torch.from_numpy(noise))
    assert prob.shape == (2, 3, 64, 32) and unc.shape == (2, 64, 32)
    assert np.abs(prob - want_prob.numpy()).max() < 1e-4 and np.abs(unc - want_unc.numpy()).max() < 1e-4
    np.testing.assert_allclose(prob.sum(1), 1.0, atol=1e-5)


def test_pint_single_model_trains_on_every_case(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = fit_dataset(tiny_config(dataset, tmp_path / "pint", method="pint", pint=PintParams(variant="pnt"), folds=1,
                                  loop=replace(TINY_LOOP, epochs=1, iterations_per_epoch=4)))
    info = load_run(run)
    assert [(m.fold, m.held_out) for m in info.models] == [(-1, [])]
    assert info.config["pint"]["variant"] == "pnt"
    row = info.log["fold_0"][0]
    assert {"alpha_pixel", "images_alpha0", "uncertainty"} <= set(row)
    assert 0.0 <= row["alpha_pixel"] <= 1.0 and row["images_alpha0"] == 0.0  # PNT: no image weights


def test_default_run_dir_and_existing_folder_refused(dataset, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(dataset, None, folds=1, loop=replace(TINY_LOOP, epochs=1, iterations_per_epoch=1))
    run = fit_dataset(config)
    assert run == Path("runs") / "Dataset002_Fit-plain"
    with pytest.raises(UsageError, match="already exists") as err:
        fit_dataset(config)
    assert "--force" in err.value.hint
    result = cli("fit", dataset, "--method", "plain", "--folds", "1", "--device", "cpu")
    assert result.exit_code == 2 and "already exists" in result.stderr
    forced = fit_dataset(replace(config, force=True))
    assert load_run(forced).models


# ----------------------------------------------------------------------------- resume

class Interrupt(Exception):
    pass


def _interrupt_at(iteration: int):
    def progress(description, completed, total, status):
        if completed == iteration:
            raise Interrupt

    return progress


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(dataset, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)
    config = tiny_config(dataset, tmp_path / "straight", method="pint", folds=1,
                         pint=PintParams(warmup_fraction=0.25))
    straight = fit_dataset(config)
    broken = replace(config, out=tmp_path / "resumed")
    with pytest.raises(Interrupt):  # dies in the middle of epoch 2, after epoch 1's checkpoint
        fit_dataset(broken, progress=_interrupt_at(3))
    assert load_checkpoint(tmp_path / "resumed" / "fold_0" / "checkpoint.pt")["epoch"] == 1
    resumed = fit_dataset(replace(broken, resume=True))
    a = load_file(straight / "fold_0" / "weights.safetensors")
    b = load_file(resumed / "fold_0" / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = load_checkpoint(straight / "fold_0" / "checkpoint.pt")
    cb = load_checkpoint(resumed / "fold_0" / "checkpoint.pt")
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    assert [r["loss"] for r in load_run(straight).log["fold_0"]] == [r["loss"] for r in load_run(resumed).log["fold_0"]]


def test_resume_with_a_truncated_checkpoint_is_a_model_error(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tiny_config(dataset, tmp_path / "run", folds=1)
    with pytest.raises(Interrupt):
        fit_dataset(config, progress=_interrupt_at(3))
    checkpoint = tmp_path / "run" / "fold_0" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    with pytest.raises(ModelError, match="checkpoint.pt: checkpoint is truncated or corrupt"):
        fit_dataset(replace(config, resume=True))


def test_resume_skips_finished_folds(plain_run, dataset, monkeypatch):
    monkeypatch.chdir(plain_run.parent)
    before = (plain_run / "fold_0" / "weights.safetensors").read_bytes()
    calls = []
    fit_dataset(tiny_config(dataset, plain_run, resume=True), progress=lambda *a: calls.append(a))
    assert calls == [] and (plain_run / "fold_0" / "weights.safetensors").read_bytes() == before
    assert len(load_run(plain_run).models) == 2


# ----------------------------------------------------------------------------- folds and sampling

def test_folds_split_cases_without_overlap():
    ids = [f"c{i}" for i in range(10)]
    groups = split_folds(ids, 3, seed=4)
    assert sorted(sum(groups, [])) == sorted(ids) and [len(g) for g in groups] == [4, 3, 3]
    assert groups == split_folds(list(reversed(ids)), 3, seed=4)  # order of discovery does not matter
    assert groups != split_folds(ids, 3, seed=5)
    with pytest.raises(UsageError, match="at least 11 cases"):
        split_folds(ids, 11, seed=0)


def test_sampler_forces_foreground_and_pads_to_16():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(10, 1, 20, 30)).astype(np.float32)
    classes = np.zeros((10, 20, 30), dtype=np.int64)
    classes[7, 5:8, 5:8] = 1  # one foreground slice of ten
    sampler = SliceSampler([(image, classes)], foreground_fraction=0.33)
    assert sampler.patch == (32, 32)
    batch, labels = sampler.sample(6, rng)
    assert batch.shape == (6, 1, 32, 32) and labels.shape == (6, 32, 32)
    assert all(labels[b].any() for b in range(2))  # round(6 * 0.33) = 2 forced
    assert np.all(batch[:, :, 20:, :] == 0)  # bottom padding, as scoring pads


def test_augmentation_is_deterministic_per_generator():
    image, classes = torch.randn(4, 2, 32, 32), torch.randint(0, 3, (4, 32, 32))
    params = replace(LoopParams(), affine_probability=1.0)
    a = augment_batch(image, classes, params, torch.Generator().manual_seed(3))
    b = augment_batch(image, classes, params, torch.Generator().manual_seed(3))
    c = augment_batch(image, classes, params, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    assert set(a[1].unique().tolist()) <= {0, 1, 2}


# ----------------------------------------------------------------------------- PINT pieces

def test_pint_loss_with_all_alphas_one_is_cross_entropy():
    torch.manual_seed(0)
    logits, classes = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    teacher = torch.softmax(torch.randn(2, 3, 8, 8), 1)
    for variant in ("pint", "pnt"):
        loss, _ = pint_loss(logits, classes, teacher, torch.ones(2, 8, 8), torch.ones(2), 1.0, variant)
        torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, classes))


def test_pint_loss_uses_the_teacher_where_alphas_are_zero():
    torch.manual_seed(1)
    logits, classes = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    teacher = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    mse = ((torch.softmax(logits, 1) - teacher) ** 2).sum(1)
    ce = torch.nn.functional.cross_entropy(logits, classes, reduction="none")
    loss, _ = pint_loss(logits, classes, teacher, torch.zeros(2, 4, 4), torch.ones(2), 2.0, "pint")
    torch.testing.assert_close(loss, 2.0 * mse.mean())
    alpha_pixel = torch.zeros(2, 4, 4)
    alpha_pixel[:, :2] = 1
    image = torch.tensor([1.0, 0.0])  # image 1 judged noisy: the teacher alone supervises it
    loss, _ = pint_loss(logits, classes, teacher, alpha_pixel, image, 1.0, "pint")
    pixel = (alpha_pixel * ce + (1 - alpha_pixel) * mse).mean((1, 2))
    torch.testing.assert_close(loss, (pixel[0] + mse[1].mean()) / 2)


def test_teacher_ema_formula_and_warm_start():
    assert ema_decay(0, 0.99) == 0.5 and ema_decay(1, 0.99) == pytest.approx(2 / 3)
    assert ema_decay(10_000, 0.99) == 0.99
    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = teacher.weight.detach().clone()
    ema_update(teacher, student, 0.9)
    torch.testing.assert_close(teacher.weight, 0.9 * before + 0.1 * student.weight.detach())


def test_threshold_schedule_and_roi_uncertainty():
    assert pixel_threshold(0, 100, 0.75) == pytest.approx(0.75 + 0.25 * np.exp(-5))
    assert pixel_threshold(100, 100, 0.75) == pytest.approx(1.0)
    unc = torch.zeros(2, 16, 16)
    unc[0, :2, :2] = 1.0  # inside image 0's ROI
    unc[1] = 0.5
    classes = torch.zeros(2, 16, 16, dtype=torch.long)
    classes[0, 0, 0] = 1
    teacher = torch.zeros(2, 2, 16, 16)
    teacher[:, 0] = 1  # teacher predicts background everywhere
    u = roi_uncertainty(unc, classes, teacher, dilation=1)
    assert u[0] == pytest.approx(1.0) and u[1] == pytest.approx(0.5)  # image 1: no ROI, whole-slice mean


def test_image_weights_flag_the_most_uncertain_images():
    method = PintMethod(PintParams(image_quantile=0.5))
    method.setup(torch.nn.Identity(), 2, 100, torch.device("cpu"))
    unc = torch.stack([torch.full((8, 8), v) for v in (0.1, 0.2, 0.8, 0.9)])
    classes = torch.ones(4, 8, 8, dtype=torch.long)
    teacher = torch.zeros(4, 2, 8, 8)
    alpha_pixel, alpha_image = method.weights(unc, classes, teacher, step=99)
    assert alpha_image.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert alpha_pixel.mean() == 1.0  # u < h(T) = 1 everywhere


# ----------------------------------------------------------------------------- errors

def test_mcpm_without_meta_set_and_bad_variant_are_usage_errors(dataset, tmp_path):
    with pytest.raises(UsageError, match="--method mcpm needs --meta-set"):
        fit_dataset(tiny_config(dataset, tmp_path / "m", method="mcpm"))
    with pytest.raises(UsageError, match="--variant"):
        fit_dataset(tiny_config(dataset, tmp_path / "v", method="pint", pint=PintParams(variant="both")))


def test_fit_without_torch_exits_5(dataset, tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from typer.testing import CliRunner\n"
        "from labelaudit.cli import app\n"
        f"r = CliRunner().invoke(app, ['fit', {str(dataset)!r}, '--out', {str(tmp_path / 'x')!r}])\n"
        "print(r.stderr); sys.exit(r.exit_code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 5, done.stdout + done.stderr
    assert "PyTorch (training) is not installed" in done.stdout and "pip install" in done.stdout
    assert not (tmp_path / "x").exists()


def test_run_json_records_folds_while_training(plain_run):
    data = json.loads((plain_run / "run.json").read_text())
    assert data["folds"] == [m["held_out"] for m in data["models"]]


def test_cli_fit_reports_run_device_and_losses_and_calibrates(dataset, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    result = cli("fit", dataset, "--method", "plain", "--folds", "2", "--epochs", "1", "--iterations-per-epoch", "2",
                 "--batch-size", "2", "--device", "cpu", "--exporter", "torchscript", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert f"run folder: {tmp_path / 'run'}" in result.stdout and "device: cpu" in result.stdout
    assert "fold 0: final loss" in result.stdout and "fold 1: final loss" in result.stdout
    info = load_run(tmp_path / "run")
    assert info.threshold  # calibrate_run (scoring) filled it
    # a 1-epoch model may score every slice high: fit then warns that its threshold flags nothing
    assert ("threshold is 1" in " ".join(result.stderr.split())) == (info.threshold.slice >= 1.0)
    assert (tmp_path / "runs" / ".latest").read_text().strip() == str((tmp_path / "run").resolve())


def test_cli_pint_options_reach_run_json(dataset, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    result = cli("fit", dataset, "--method", "pint", "--folds", "1", "--epochs", "1", "--iterations-per-epoch", "2",
                 "--batch-size", "2", "--device", "cpu", "--out", tmp_path / "run", "--ema-decay", "0.9",
                 "--image-quantile", "0.7", "--memory-batches", "5", "--warmup", "0.5")
    assert result.exit_code == 0, result.stderr
    pint = json.loads((tmp_path / "run" / "run.json").read_text())["config"]["pint"]
    assert (pint["ema_decay"], pint["image_quantile"], pint["memory_batches"], pint["warmup_fraction"]) == (
        0.9, 0.7, 5, 0.5)


# ----------------------------------------------------------------------------- patches, network shape, progress

def test_patch_training_on_slices_larger_than_the_patch_scores_whole_slices(tmp_path, monkeypatch):
    import csv

    from labelaudit.config import ScoreConfig
    from labelaudit.score.pipeline import score_dataset

    monkeypatch.chdir(tmp_path)
    big = write_synth_dataset(tmp_path / "Dataset004_Big", SynthConfig(cases=2, size=(80, 72, 3), classes=1))
    run = fit_dataset(tiny_config(big, tmp_path / "run", calibrate=True,
                                  loop=replace(TINY_LOOP, patch_size=32)))
    info = load_run(run)
    assert info.config["loop"]["patch_size"] == 32 and info.threshold is not None
    score_dataset(ScoreConfig(run_dir=run, out_dir=tmp_path / "audit", device="cpu"))
    with open(tmp_path / "audit" / "slices.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 3 and all(np.isfinite(float(r["noise_score"])) for r in rows)


def test_sampler_cuts_patches_from_larger_slices_and_keeps_foreground():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 1, 100, 70)).astype(np.float32)
    classes = np.zeros((4, 100, 70), dtype=np.int64)
    classes[2, 80:84, 60:64] = 1  # a small structure near a corner
    sampler = SliceSampler([(image, classes)], patch_size=32, foreground_fraction=0.5)
    assert sampler.patch == (32, 32)
    for _ in range(10):
        batch, labels = sampler.sample(4, rng)
        assert batch.shape == (4, 1, 32, 32) and all(labels[b].any() for b in range(2))


def test_cli_network_and_patch_options_reach_run_json(dataset, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    result = cli("fit", dataset, "--method", "plain", "--folds", "1", "--epochs", "1", "--iterations-per-epoch", "1",
                 "--batch-size", "2", "--device", "cpu", "--out", tmp_path / "run", "--features", "4,8,8,16,16,4",
                 "--patch-size", "32", "--preprocessed", tmp_path / "pre")
    assert result.exit_code == 0, result.stderr
    config = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert config["net"]["features"] == [4, 8, 8, 16, 16, 4] and config["loop"]["patch_size"] == 32
    assert config["preprocessed"] == str(tmp_path / "pre") and config["image_dtype"] == "float32"
    assert any((tmp_path / "pre").iterdir())
    bad = cli("fit", dataset, "--features", "4,8,8", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "--features 4,8,8: expected 6 channel counts" in bad.stderr
    odd = cli("fit", dataset, "--features", "4,8,8,8,8,6", "--out", tmp_path / "bad")
    assert odd.exit_code == 2 and "multiple of the GroupNorm groups" in odd.stderr


def test_progress_reports_the_time_left_over_every_fold():
    from labelaudit.train.progress import FoldsProgress, format_seconds

    now = [100.0]
    seen = []
    clock = FoldsProgress(lambda *a: seen.append(a), folds=3, per_fold=10, clock=lambda: now[0])
    clock.skip()  # fold 0 finished before a resume: reports nothing
    first = clock.fold()
    first("fold 2/3", 4, 10, "")  # resumed after 4 steps: the clock starts here
    now[0] += 12.0
    first("fold 2/3", 10, 10, "epoch 2/2 loss 0.5")  # 6 steps in 12 s
    now[0] += 3.0  # export between folds
    second = clock.fold()
    second("fold 3/3", 0, 10, "")
    now[0] += 5.0
    second("fold 3/3", 1, 10, "epoch 1/2 loss 0.9")  # 7 steps in 20 s; 9 left
    assert seen[1][3] == "epoch 2/2 loss 0.5 · all folds 38%, 0:00:20 left"  # 6 of 16 steps, 10 left at 2 s
    assert seen[-1][:3] == ("fold 3/3", 1, 10)
    assert seen[-1][3] == f"epoch 1/2 loss 0.9 · all folds 44%, {format_seconds(20 / 7 * 9)} left"
    assert format_seconds(3725) == "1:02:05" and format_seconds(None) == "?"


def test_a_team_members_rows_are_those_of_the_whole_batch():
    """DDP: each member samples and augments only its rows, with the draws of the whole batch."""
    from labelaudit.config import LoopParams
    from labelaudit.train.distributed import Layout, Team
    from labelaudit.train.loop import SliceSampler, augment_batch

    rng = np.random.default_rng(3)
    cases = [(rng.normal(size=(5, 1, 40, 44)).astype(np.float32), (rng.random((5, 40, 44)) > 0.7).astype(np.int64))
             for _ in range(2)]
    sampler = SliceSampler(cases, patch_size=32)
    params = LoopParams(affine_probability=0.5)
    whole_image, whole_classes = sampler.sample(4, np.random.default_rng(0))
    whole = augment_batch(torch.from_numpy(whole_image), torch.from_numpy(whole_classes), params,
                          torch.Generator().manual_seed(1))
    for member in range(2):
        rows = Team(member, 2).rows(4)
        image, classes = sampler.sample(4, np.random.default_rng(0), rows)
        np.testing.assert_array_equal(image, whole_image[list(rows)])
        mine = augment_batch(torch.from_numpy(image), torch.from_numpy(classes), params,
                             torch.Generator().manual_seed(1), rows, 4)
        assert torch.equal(mine[0], whole[0][list(rows)]) and torch.equal(mine[1], whole[1][list(rows)])

    # folds are spread first; only processes beyond one per fold join a fold's team
    assert [Layout(2, 3).folds_of(r) for r in range(2)] == [[0, 2], [1]]
    assert [Layout(2, 1).folds_of(r) for r in range(2)] == [[0], [0]]
    assert [Layout(6, 3).folds_of(r) for r in range(6)] == [[0], [0], [1], [1], [2], [2]]
    assert Layout(4, 3).idle == [3] and Layout(8, 3).idle == [6, 7] and Layout(6, 3).idle == []
    with pytest.raises(UsageError, match="--batch-size 3: a fold trained by 2 processes together needs a multiple"):
        Team(1, 2).check_batch(3)


def test_presets_set_the_budget_and_options_override_them(dataset, tmp_path, monkeypatch, cli):
    from labelaudit.config import PRESET_BUDGETS, Preset, preset_budget

    monkeypatch.chdir(tmp_path)  # fit points ./runs/.latest at its run

    common = ("--method", "plain", "--folds", "1", "--iterations-per-epoch", "1", "--batch-size", "2",
              "--device", "cpu", "--preprocessed", tmp_path / "pre")
    fast = cli("fit", dataset, *common, "--preset", "fast", "--out", tmp_path / "fast")
    assert fast.exit_code == 0, fast.stderr
    config = json.loads((tmp_path / "fast" / "run.json").read_text())["config"]
    epochs, features = PRESET_BUDGETS[Preset.FAST]
    assert config["loop"]["epochs"] == epochs == 10 and tuple(config["net"]["features"]) == features
    assert "budget: 10 epochs, U-Net 8,16,32,64,128,8 (the fast preset)" in fast.stdout
    # the default is the standard preset; --epochs changes only the epochs
    mixed = cli("fit", dataset, *common, "--epochs", "2", "--out", tmp_path / "standard")
    assert mixed.exit_code == 0, mixed.stderr
    config = json.loads((tmp_path / "standard" / "run.json").read_text())["config"]
    assert config["loop"]["epochs"] == 2
    assert tuple(config["net"]["features"]) == PRESET_BUDGETS[Preset.STANDARD][1] == (16, 16, 32, 64, 128, 16)
    assert "budget: 2 epochs, U-Net 16,16,32,64,128,16 (no preset's)" in mixed.stdout
    assert load_run(tmp_path / "fast").settings.preset is Preset.FAST
    assert load_run(tmp_path / "standard").settings.preset is None
    loop, net = preset_budget(Preset.FAST)
    assert (loop.epochs, net.features) == PRESET_BUDGETS[Preset.FAST]


@pytest.mark.parametrize("slice_threshold, warned", [(1.0, True), (0.3, False)])
def test_cli_fit_warns_exactly_when_its_calibrated_threshold_is_at_the_ceiling(dataset, tmp_path, monkeypatch, cli,
                                                                                make_run, slice_threshold, warned):
    # the fit itself is stood in for by a run folder with the calibration it would have written
    threshold = {"slice": slice_threshold, "case": slice_threshold, "rule": "median+k*mad", "k": 3.0, "floor": 0.05,
                 "slice_stats": {"median": 0.7, "mad": 0.2}}
    run_dir = make_run(tmp_path / "run", dataset, threshold=threshold)
    monkeypatch.setattr("labelaudit.train.fit.fit_dataset", lambda config, **_: run_dir)
    monkeypatch.chdir(tmp_path)
    result = cli("fit", dataset, "--device", "cpu", "--out", tmp_path / "elsewhere")
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert ("threshold is 1" in said and "median 0.70, MAD 0.20" in said) == warned, said
