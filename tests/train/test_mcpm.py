"""MCPM: the meta set, the meta mask network, the bilevel step, meta_weight.onnx, and a planted error end to end."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from labelaudit.errors import InputError, UsageError  # noqa: E402
from labelaudit.config import FitConfig, LoopParams, McpmParams, NetParams  # noqa: E402
from labelaudit.train.fit import fit_dataset  # noqa: E402
from labelaudit.train.meta_set import meta_set_from_dataset, meta_set_from_file, read_meta_ids  # noqa: E402
from labelaudit.train.loop import load_checkpoint, soft_dice_loss  # noqa: E402
from labelaudit.train.mcpm import (  # noqa: E402
    McpmMethod, build_meta_net, epoch_cost, meta_step, training_objective, virtual_meta_loss)
from labelaudit.train.nets import build_unet  # noqa: E402
from labelaudit.formats.run import load_run  # noqa: E402
from labelaudit.synth import SynthConfig, write_synth_dataset  # noqa: E402

TINY_NET = NetParams(features=(4, 8, 8, 8, 8, 4), groups=4)
CASES = ["case_000", "case_001", "case_002", "case_003"]


def disks(n: int, size: int = 32, grow: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy images of a bright disk, (n, 1, size, size) float32, and labels (n, size, size) int64 whose
    disks are `grow` px larger than the image's on every other image (a dilation corruption)."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dist = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).float().sqrt()
    radius = 5 + torch.arange(n) % 4
    inside = dist[None] < radius[:, None, None]
    image = inside.float()[:, None] + 0.2 * torch.randn(n, 1, size, size, generator=gen)
    grown = radius + grow * (torch.arange(n) % 2 == 0)
    return image, (dist[None] < grown[:, None, None]).long()


# ----------------------------------------------------------------------------- the meta mask network

def test_meta_net_starts_at_the_initial_weight_and_keeps_r_in_0_1():
    theta = build_meta_net(2, 3, McpmParams(initial_weight=0.9))
    image, prob = torch.randn(2, 2, 16, 24), torch.softmax(torch.randn(2, 3, 16, 24), 1)
    classes = torch.randint(0, 3, (2, 16, 24))
    weight = theta(image, classes, prob)
    assert weight.shape == (2, 1, 16, 24)
    torch.testing.assert_close(weight, torch.full_like(weight, 0.9))
    for p in theta.parameters():
        torch.nn.init.normal_(p, std=2.0)
    weight = theta(image, classes, prob)
    assert weight.min() >= 0 and weight.max() <= 1 and weight.std() > 0
    assert sum(p.numel() for p in theta.parameters()) < 10_000  # "small"


def test_unit_weights_give_the_plain_loss():
    """Warm-up (R = 1) trains exactly like plain: CE + soft Dice."""
    logits, classes = torch.randn(3, 3, 8, 8), torch.randint(0, 3, (3, 8, 8))
    loss, _ = training_objective(logits, classes, torch.ones(3, 8, 8), McpmParams())
    plain = torch.nn.functional.cross_entropy(logits, classes) + soft_dice_loss(torch.softmax(logits, 1), classes)
    torch.testing.assert_close(loss, plain)
    ce_only = McpmParams(normalise="sum", train_dice=False)
    normalised, _ = training_objective(logits, classes, torch.full((3, 8, 8), 0.5), ce_only)
    unweighted, _ = training_objective(logits, classes, torch.ones(3, 8, 8), ce_only)
    torch.testing.assert_close(normalised, unweighted)  # sum-normalised: a uniform R changes nothing


# ----------------------------------------------------------------------------- the bilevel step

def test_meta_step_moves_theta_only_and_lowers_the_meta_loss():
    torch.manual_seed(0)
    net = build_unet(1, 2, TINY_NET).train()
    theta = build_meta_net(1, 2, McpmParams())
    optimizer = torch.optim.Adam(theta.parameters(), lr=1e-2)
    image, classes = disks(4, grow=4)
    meta_image, meta_classes = disks(4, seed=1)
    w_before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    t_before = {k: v.detach().clone() for k, v in theta.state_dict().items()}
    losses = [meta_step(net, theta, optimizer, image, classes, meta_image, meta_classes, 0.05, McpmParams())
              for _ in range(4)]
    assert all(torch.equal(w_before[k], v) for k, v in net.state_dict().items())  # W untouched
    assert all(p.grad is None for p in net.parameters())
    assert any(not torch.equal(t_before[k], v) for k, v in theta.state_dict().items())
    assert losses[-1] < losses[0]  # Theta descends the meta loss of the virtual weights


def test_meta_gradient_matches_finite_differences():
    """dJ/dTheta through the virtual step equals central differences, in float64 (algorithms.md §8.4)."""
    torch.manual_seed(1)
    net = build_unet(1, 2, TINY_NET).double().train()
    theta = build_meta_net(1, 2, McpmParams()).double()
    for p in theta.parameters():  # away from the constant start, so every parameter matters
        torch.nn.init.normal_(p, std=0.3)
    image, classes = disks(2, size=16, grow=2)
    meta_image, meta_classes = disks(2, size=16, seed=2)
    args = (image.double(), classes, meta_image.double(), meta_classes, 0.5, McpmParams())
    j = virtual_meta_loss(net, theta, *args)
    (grad,) = torch.autograd.grad(j, [theta.head.bias])
    assert grad.abs().item() > 1e-8
    h = 1e-5
    with torch.no_grad():
        theta.head.bias += h
    up = virtual_meta_loss(net, theta, *args).item()
    with torch.no_grad():
        theta.head.bias -= 2 * h
    down = virtual_meta_loss(net, theta, *args).item()
    assert grad.item() == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-10)


def test_actual_step_leaves_theta_alone_and_reports_weights():
    torch.manual_seed(0)
    meta_image, meta_classes = disks(4, seed=3)
    loop = LoopParams(epochs=1, iterations_per_epoch=4, batch_size=2)
    method = McpmMethod(McpmParams(warmup_fraction=0.25), [(meta_image.numpy(), meta_classes.numpy())], 7, loop)
    net = build_unet(1, 2, TINY_NET).train()
    method.setup(net, 2, 4, torch.device("cpu"))
    image, classes = disks(2, grow=3)
    loss, stats = method.loss(net, image, classes, 0, torch.Generator())
    assert stats["warmup"] == 1.0 and stats["weight_mean"] == 1.0 and "meta_loss" not in stats
    before = {k: v.clone() for k, v in method.theta.state_dict().items()}
    loss, stats = method.loss(net, image, classes, 1, torch.Generator())
    assert stats["warmup"] == 0.0 and np.isfinite(stats["meta_loss"]) and 0 < stats["weight_mean"] < 1
    moved = {k: v.clone() for k, v in method.theta.state_dict().items()}
    assert any(not torch.equal(before[k], moved[k]) for k in before)  # the meta step ran
    loss.backward()  # the actual step's gradient reaches W only
    assert all(p.grad is None for p in method.theta.parameters())
    assert all(p.grad is not None for p in net.parameters())
    state = method.state_dict()
    assert {"theta", "theta_optimizer", "rng", "generator"} <= set(state)


def test_epoch_cost_subtracts_meta_time():
    log = [{"seconds": 2.0, "meta_step_s": 0.0, "warmup": 1.0},
           {"seconds": 10.0, "meta_step_s": 0.2, "warmup": 0.0, "meta_loss": 1.0}]
    cost = epoch_cost(log, iterations_per_epoch=40)
    assert cost["epoch_s"] == 10.0 and cost["plain_equivalent_epoch_s"] == 2.0 and cost["ratio"] == 5.0


# ----------------------------------------------------------------------------- the meta set

def test_meta_set_file_parsing_and_errors(tmp_path):
    listed = tmp_path / "meta.txt"
    listed.write_text("\ufeff# verified by R.K.\ncase_002  # second pass\n\ncase_000\ncase_002\n")
    assert read_meta_ids(listed) == ["case_002", "case_000"]
    meta = meta_set_from_file(listed, CASES)
    assert meta.case_ids == ("case_000", "case_002") and meta.excluded == meta.case_ids
    with pytest.raises(InputError, match=r"--meta-set .*nothing\.txt: file not found"):
        read_meta_ids(tmp_path / "nothing.txt")
    (tmp_path / "empty.txt").write_text("# nothing verified yet\n\n")
    with pytest.raises(InputError, match=r"empty\.txt: lists no case id"):
        read_meta_ids(tmp_path / "empty.txt")
    (tmp_path / "typo.txt").write_text("case_001\ncase_01\nliver_7\n")
    with pytest.raises(InputError, match=r"typo\.txt: case id\(s\) not in the dataset's readable cases: "
                                         r"case_01, liver_7") as err:
        meta_set_from_file(tmp_path / "typo.txt", CASES)
    assert "case_000" in err.value.hint
    (tmp_path / "all.txt").write_text("\n".join(CASES))
    with pytest.raises(InputError, match=r"all\.txt: takes every case of the dataset \(4\), leaving none"):
        meta_set_from_file(tmp_path / "all.txt", CASES)


def test_meta_set_folder_excludes_shared_ids(tmp_path):
    meta = meta_set_from_dataset(tmp_path, ["case_001", "extra_9"], CASES)
    assert meta.source == "dataset" and meta.excluded == ("case_001",)
    assert meta.to_json()["cases"] == ["case_001", "extra_9"]
    with pytest.raises(InputError, match="takes every case"):
        meta_set_from_dataset(tmp_path, CASES, CASES)
    with pytest.raises(InputError, match="no readable case"):
        meta_set_from_dataset(tmp_path, [], CASES)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return write_synth_dataset(tmp_path_factory.mktemp("mcpmdata") / "Dataset005_Meta",
                               SynthConfig(cases=4, size=(32, 32, 4)))


def test_fit_refuses_bad_meta_sets_before_training(small_dataset, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    base = FitConfig(dataset=small_dataset, out=tmp_path / "run", method="mcpm", folds=1, device="cpu",
                     calibrate=False, exporter="torchscript", net=TINY_NET)
    with pytest.raises(UsageError, match="--method mcpm needs --meta-set"):
        fit_dataset(base)
    (tmp_path / "ids.txt").write_text("case_009\n")
    with pytest.raises(InputError, match="case_009"):
        fit_dataset(replace(base, meta_set=tmp_path / "ids.txt"))
    with pytest.raises(InputError, match="takes every case"):  # the dataset itself as the meta folder
        fit_dataset(replace(base, meta_set=small_dataset))
    assert not (tmp_path / "run" / "fold_0").exists()
    result = cli("fit", small_dataset, "--method", "mcpm", "--meta-set", tmp_path / "missing.txt", "--folds", "1",
                 "--device", "cpu", "--out", tmp_path / "cli")
    assert result.exit_code == 3 and "missing.txt: file not found" in result.stderr


# ----------------------------------------------------------------------------- export

@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_meta_weight_graph_contract_and_parity(exporter, tmp_path):
    import onnxruntime as ort

    from labelaudit.train.export import export_meta_weight

    torch.manual_seed(0)
    theta = build_meta_net(2, 3, McpmParams()).eval()
    for p in theta.parameters():
        torch.nn.init.normal_(p, std=0.3)
    record = export_meta_weight(theta, 3, 2, tmp_path / "meta_weight.onnx", exporter)
    assert record["max_abs_diff"] < 1e-4 and record["checked_shape"] == [3, 2, 48, 80]
    session = ort.InferenceSession(str(tmp_path / "meta_weight.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in session.get_inputs()] == [
        ("image", "tensor(float)"), ("label", "tensor(int64)"), ("prob", "tensor(float)")]
    rng = np.random.default_rng(5)
    image = rng.normal(size=(2, 2, 16, 48)).astype(np.float32)
    label = rng.integers(0, 3, size=(2, 16, 48))
    prob = rng.dirichlet(np.ones(3), size=(2, 16, 48)).transpose(0, 3, 1, 2).astype(np.float32)
    (got,) = session.run(["weight"], {"image": image, "label": label, "prob": prob})
    with torch.no_grad():
        want = theta(torch.from_numpy(image), torch.from_numpy(label), torch.from_numpy(prob)).numpy()
    assert got.shape == (2, 1, 16, 48) and np.abs(got - want).max() < 1e-4


# ----------------------------------------------------------------------------- end to end

PLANTED_CASE, PLANTED_SLICE = "case_002", 3


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """3 cases of 6 slices; case_002's middle slice labelled with its structure moved and dilated.

    Meta set: case_000."""
    from scipy import ndimage

    from labelaudit import io

    work = tmp_path_factory.mktemp("mcpm_planted")
    data = write_synth_dataset(work / "Dataset006_Planted", SynthConfig(cases=3, size=(32, 32, 6), rotation_deg=0.0))
    path = data / "labelsTr" / f"{PLANTED_CASE}.nii.gz"
    volume = io.read_volume(path)
    label = volume.array.copy()
    clean = label[PLANTED_SLICE].copy()
    assert clean.any()
    # moved by 8 px and dilated by 2 px: a strong, band-and-shift corruption of one slice
    label[PLANTED_SLICE] = ndimage.binary_dilation(np.roll(clean > 0, 8, axis=1), iterations=2).astype(label.dtype)
    io.write_volume(type(volume)(label, volume.geometry), path)
    (work / "meta.txt").write_text("case_000\n")
    config = FitConfig(dataset=data, out=work / "run", method="mcpm", folds=1, device="cpu", calibrate=False,
                       exporter="torchscript", net=TINY_NET, meta_set=work / "meta.txt",
                       loop=LoopParams(epochs=2, iterations_per_epoch=12, batch_size=4, augment=False,
                                       learning_rate=1e-2),
                       mcpm=McpmParams(meta_lr=1e-2, warmup_fraction=0.2, meta_batch_size=4))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        run = fit_dataset(config)
    return run, data, clean, label[PLANTED_SLICE]


def test_planted_slice_gets_low_meta_weight_and_ranks_first(planted):
    import onnxruntime as ort

    from labelaudit.data import discover_dataset, load_case
    from labelaudit.preprocess import pad_to_multiple, prepare_case
    from labelaudit.config import PixelScore, ScoreConfig
    from labelaudit.score.pipeline import score_dataset

    run, data, clean, noisy = planted
    info = load_run(run)
    assert info.method == "mcpm" and info.models[0].meta_weight == "fold_0/meta_weight.onnx"
    audit = score_dataset(ScoreConfig(run_dir=run, write=False, device="cpu",
                                      pixel_score=PixelScore.META_DISAGREEMENT))
    assert audit.pixel_score == PixelScore.META_DISAGREEMENT.value
    top = audit.slices[0]
    assert (top.case_id, top.slice_index) == (PLANTED_CASE, PLANTED_SLICE)
    assert audit.cases[0].case_id == PLANTED_CASE
    # the default audit of an MCPM run (confident disagreement of the MCPM-trained network) finds it too
    default = score_dataset(ScoreConfig(run_dir=run, write=False, device="cpu"))
    assert default.pixel_score == PixelScore.CONFIDENT_DISAGREEMENT.value
    assert (default.slices[0].case_id, default.slices[0].slice_index) == (PLANTED_CASE, PLANTED_SLICE)
    assert {c.case_id: c.routing for c in audit.cases}["case_000"] == "in-sample"  # the meta case: ensemble

    # R on the planted slice from the exported graphs: low on the corrupted band, high elsewhere
    dataset = discover_dataset(data)
    case = load_case(next(r for r in dataset.cases if r.case_id == PLANTED_CASE), dataset)
    image, classes = prepare_case(case, info.preprocessing, info.label_map)
    x, _ = pad_to_multiple(image[PLANTED_SLICE:PLANTED_SLICE + 1], info.preprocessing.divisor)
    y, _ = pad_to_multiple(classes[PLANTED_SLICE:PLANTED_SLICE + 1], info.preprocessing.divisor)
    segmenter = ort.InferenceSession(str(run / info.models[0].segmenter), providers=["CPUExecutionProvider"])
    prob, _ = segmenter.run(None, {"image": x, "noise": np.zeros((1, *x.shape[1:]), np.float32)})
    weighter = ort.InferenceSession(str(run / info.models[0].meta_weight), providers=["CPUExecutionProvider"])
    (weight,) = weighter.run(["weight"], {"image": x, "label": y, "prob": prob})
    h, w = clean.shape
    weight = weight[0, 0, :h, :w]
    corrupted = (noisy > 0) & (clean == 0)
    assert corrupted.sum() > 20
    assert weight[corrupted].mean() < weight[~corrupted].mean()


def test_mcpm_run_records_meta_set_cost_and_theta(planted):
    from safetensors.torch import load_file

    run, *_ = planted
    data = json.loads((run / "run.json").read_text())
    assert data["meta_set"]["cases"] == ["case_000"] and data["meta_set"]["source"] == "file"
    assert "case_000" not in data["folds"][0] or len(data["folds"]) == 1
    assert data["config"]["mcpm"]["meta_lr"] == 1e-2
    export = data["models"][0]["export"]
    assert export["meta_weight"]["max_abs_diff"] < 1e-4
    assert data["mcpm_cost"]["fold_0"]["ratio"] > 1.0
    rows = data["log"]["fold_0"]
    assert all(np.isfinite(r["meta_loss"]) for r in rows) and {"weight_mean", "weight_low", "weight_fg"} <= set(rows[0])
    state = load_checkpoint(run / "fold_0" / "checkpoint.pt")
    assert {"theta", "theta_optimizer", "rng", "generator"} <= set(state["method"])
    theta = load_file(run / "fold_0" / "meta_weight.safetensors")
    assert all(torch.equal(theta[k], v) for k, v in state["method"]["theta"].items())


def test_method_state_round_trip_continues_the_same_streams():
    """What the loop's checkpoint needs for an exact resume (the loop's own resume is tested in test_fit):
    Theta, its optimiser and the meta-batch streams restored into a fresh method give the same next step."""
    meta_image, meta_classes = disks(4, seed=3)
    loop = LoopParams(epochs=1, iterations_per_epoch=4, batch_size=2)
    params = McpmParams(warmup_fraction=0.0)
    image, classes = disks(2, grow=3)

    def fresh() -> tuple[McpmMethod, torch.nn.Module]:
        torch.manual_seed(0)
        net = build_unet(1, 2, TINY_NET).train()
        method = McpmMethod(params, [(meta_image.numpy(), meta_classes.numpy())], 11, loop)
        method.setup(net, 2, 4, torch.device("cpu"))
        return method, net

    first, net = fresh()
    first.loss(net, image, classes, 0, torch.Generator())
    saved = copy.deepcopy(first.state_dict())  # as torch.save would freeze it
    _, want = first.loss(net, image, classes, 1, torch.Generator())
    second, net2 = fresh()
    second.load_state_dict(saved)
    _, got = second.loss(net2, image, classes, 1, torch.Generator())
    assert got["meta_loss"] == want["meta_loss"] and got["weight_mean"] == want["weight_mean"]
    assert all(torch.equal(a, b) for a, b in zip(first.theta.parameters(), second.theta.parameters()))


def test_weighting_choices_are_enums_and_bad_ones_are_usage_errors():
    from labelaudit.config import MetaNormalise, PintParams, WeightRule
    from labelaudit.errors import UsageError

    assert McpmParams(normalise="sum").normalise is MetaNormalise.SUM  # run.json's string, read back
    assert PintParams(pixel_weight="soft").pixel_weight is WeightRule.SOFT
    assert McpmParams().to_json()["normalise"] == "class"
    for bad in (lambda: McpmParams(normalise="median"), lambda: PintParams(image_weight="medium")):
        with pytest.raises(UsageError, match="expected one of"):
            bad()
