"""MCPM's defences against a collapsing meta weight R: class normalisation, the weight floor, the collapse guard."""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from labelaudit.config import LoopParams, McpmParams, NetParams  # noqa: E402
from labelaudit.train.loop import SliceSampler, soft_dice_loss, train  # noqa: E402
from labelaudit.train.mcpm import CollapseGuard, McpmMethod, class_normalised, training_objective  # noqa: E402

TINY_NET = NetParams(features=(4, 8, 8, 8, 8, 4), groups=4)


def disks(n: int, size: int = 32, grow: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n noisy images of a bright disk (n, 1, size, size) float32 and labels (n, size, size) int64, every other
    label dilated by `grow` px."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    dist = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).float().sqrt()
    radius = 5 + torch.arange(n) % 4
    image = (dist[None] < radius[:, None, None]).float()[:, None] + 0.2 * torch.randn(n, 1, size, size, generator=gen)
    grown = radius + grow * (torch.arange(n) % 2 == 0)
    return image.numpy(), (dist[None] < grown[:, None, None]).long().numpy()


# ----------------------------------------------------------------------------- the weighting

def test_class_normalisation_keeps_each_class_total_and_ignores_r_level():
    classes = torch.tensor([[[0, 0, 1, 1], [0, 2, 2, 2]]])
    weight = torch.tensor([[[0.1, 0.3, 0.5, 0.5], [0.2, 0.01, 0.02, 0.03]]])
    w = class_normalised(weight, classes, 3)
    for c in range(3):
        assert w[classes == c].mean().item() == pytest.approx(1.0)  # every class keeps its unweighted total
    torch.testing.assert_close(class_normalised(weight * 1e-4, classes, 3), w)  # R's level is not a lever


def test_uniform_or_collapsed_r_trains_like_plain():
    """With class normalisation and the floor, R = const and R = 0 (a collapsed Theta) both give the plain
    loss (CE + soft Dice): a collapse can no longer switch the foreground off or stop W learning."""
    torch.manual_seed(0)
    logits, classes = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    plain = torch.nn.functional.cross_entropy(logits, classes) + soft_dice_loss(torch.softmax(logits, 1), classes)
    for r in (0.9, 1e-6, 0.0):
        loss, _ = training_objective(logits, classes, torch.full((2, 8, 8), r), McpmParams())
        torch.testing.assert_close(loss, plain)
    fg_off = torch.where(classes == 0, torch.tensor(0.9), torch.tensor(0.0))  # the benchmark's collapse
    loss, _ = training_objective(logits, classes, fg_off, McpmParams())
    torch.testing.assert_close(loss, plain)
    for params, learns_foreground in ((McpmParams(), True), (McpmParams(normalise="sum", weight_floor=0.0), False)):
        x = logits.clone().requires_grad_(True)
        training_objective(x, classes, fg_off, params)[0].backward()
        fg_grad = x.grad.abs().sum(1)[classes != 0]
        assert bool((fg_grad > 0).all()) is learns_foreground  # the former default: the foreground drops out


# ----------------------------------------------------------------------------- the guard

def test_guard_counts_consecutive_low_batches_only():
    guard = CollapseGuard(floor=0.05, patience=3, max_resets=1)
    assert not any(guard.observe(v) for v in (0.01, 0.01, 0.5, 0.01, float("nan"), 0.01))
    assert guard.streak == 2 and guard.collapses == 0  # NaN (no foreground) neither counts nor breaks it
    assert guard.observe(0.02) and guard.collapses == 1 and guard.streak == 0 and not guard.unweighted
    assert [guard.observe(0.0) for _ in range(3)] == [False, False, True] and guard.unweighted
    assert not guard.observe(0.0)  # off for the rest of the fold
    assert not CollapseGuard(floor=0.0, patience=1, max_resets=1).observe(0.0)


def _method(params: McpmParams, loop: LoopParams) -> tuple[McpmMethod, torch.nn.Module]:
    from labelaudit.train.nets import build_unet

    meta_image, meta_classes = disks(4, seed=3)
    torch.manual_seed(0)
    net = build_unet(1, 2, TINY_NET).train()
    method = McpmMethod(params, [(meta_image, meta_classes)], 7, loop)
    method.setup(net, 2, loop.total_iterations, torch.device("cpu"))
    return method, net


def test_guard_fires_on_a_forced_collapse_and_resets_theta(caplog):
    loop = LoopParams(epochs=1, iterations_per_epoch=4, batch_size=2, augment=False)
    params = McpmParams(warmup_fraction=0.0, collapse_patience=3, meta_batch_size=2)
    method, net = _method(params, loop)
    with torch.no_grad():
        method.theta.head.bias.fill_(-30.0)  # R ~ 1e-13 everywhere: a collapsed Theta, its gradient gone
    image, classes = (torch.from_numpy(a) for a in disks(2, grow=3))
    seen = []
    with caplog.at_level(logging.WARNING, logger="labelaudit.train.mcpm"):
        for step in range(4):
            _, stats = method.loss(net, image, classes, step, torch.Generator())
            seen.append(stats)
    assert [s["weight_fg"] < 0.05 for s in seen] == [True, True, True, False]  # reset after the 3rd
    assert method.guard.collapses == 1 and seen[-1]["r_collapses"] == 1.0 and seen[-1]["r_unweighted"] == 0.0
    assert "r_collapses" not in seen[0]  # reported once an epoch (its last step), so the epoch mean is exact
    assert seen[-1]["weight_fg"] == pytest.approx(params.initial_weight, abs=0.05)
    assert any("collapsed" in r.getMessage() and "reset" in r.getMessage() for r in caplog.records)
    state = method.state_dict()
    assert state["guard"] == {"streak": 0, "collapses": 1, "unweighted": False}


def test_guard_recovers_inside_the_loop_and_the_log_says_so(tmp_path, caplog):
    image, classes = disks(8, grow=3, seed=1)
    loop = LoopParams(epochs=2, iterations_per_epoch=3, batch_size=2, augment=False)
    params = McpmParams(warmup_fraction=0.0, collapse_patience=3, meta_batch_size=2)  # fires at epoch 1's end
    meta_image, meta_classes = disks(4, seed=3)
    method = McpmMethod(params, [(meta_image, meta_classes)], 7, loop)
    setup = method.setup

    def collapsed_setup(*args):
        setup(*args)
        with torch.no_grad():
            method.theta.head.bias.fill_(-30.0)

    method.setup = collapsed_setup
    with caplog.at_level(logging.WARNING, logger="labelaudit.train.mcpm"):
        result = train(method, SliceSampler([(image, classes)]), 2, loop, TINY_NET, 0, torch.device("cpu"),
                       tmp_path / "checkpoint.pt")
    assert [row["r_collapses"] for row in result.log] == [1.0, 1.0]
    assert result.log[0]["weight_fg"] < 0.05 < result.log[1]["weight_fg"]  # collapsed, then live again
    assert math.isfinite(result.final_loss) and result.final_loss > 0.05  # W kept learning
    assert sum("collapsed" in r.getMessage() for r in caplog.records) == 1


def test_guard_stays_quiet_on_a_normal_short_run(tmp_path, caplog):
    image, classes = disks(8, grow=3, seed=1)
    loop = LoopParams(epochs=2, iterations_per_epoch=4, batch_size=2, augment=False)
    params = McpmParams(warmup_fraction=0.25, collapse_patience=2, meta_batch_size=2, meta_lr=1e-2)
    method = McpmMethod(params, [disks(4, seed=3)], 7, loop)
    with caplog.at_level(logging.WARNING, logger="labelaudit.train.mcpm"):
        result = train(method, SliceSampler([(image, classes)]), 2, loop, TINY_NET, 0, torch.device("cpu"),
                       tmp_path / "checkpoint.pt")
    assert [row["r_collapses"] for row in result.log] == [0.0, 0.0] and method.guard.collapses == 0
    assert all(row["weight_fg"] > 0.05 for row in result.log)
    assert not [r for r in caplog.records if "collapsed" in r.getMessage()]


def test_a_repeated_collapse_turns_the_weighting_off(caplog):
    loop = LoopParams(epochs=1, iterations_per_epoch=6, batch_size=2, augment=False)
    params = McpmParams(warmup_fraction=0.0, collapse_patience=2, collapse_resets=1, meta_batch_size=2, meta_lr=0.0)
    method, net = _method(params, loop)
    image, classes = (torch.from_numpy(a) for a in disks(2, grow=3))

    def collapse():
        with torch.no_grad():
            method.theta.head.bias.fill_(-30.0)

    collapse()
    seen = []
    with caplog.at_level(logging.WARNING, logger="labelaudit.train.mcpm"):
        for step in range(6):
            _, stats = method.loss(net, image, classes, step, torch.Generator())
            seen.append(stats)
            if step == 1:
                collapse()  # the reset Theta collapses again
    assert method.guard.collapses == 2 and method.guard.unweighted
    assert [("meta_loss" in s, s["weight_fg"]) for s in seen[4:]] == [(False, 1.0), (False, 1.0)]  # plain now
    assert seen[-1]["r_collapses"] == 2.0 and seen[-1]["r_unweighted"] == 1.0
    assert all(torch.equal(v, method.theta_init[k]) for k, v in method.theta.state_dict().items())
    messages = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert len(messages) == 2 and "reset" in messages[0] and "unweighted loss" in messages[1]


def test_guard_state_resumes_and_old_checkpoints_load():
    loop = LoopParams(epochs=1, iterations_per_epoch=4, batch_size=2)
    method, _ = _method(replace(McpmParams(), collapse_patience=5), loop)
    method.guard.streak, method.guard.collapses, method.guard.unweighted = 3, 2, True
    state = method.state_dict()
    fresh, _ = _method(McpmParams(), loop)
    fresh.load_state_dict(state)
    assert (fresh.guard.streak, fresh.guard.collapses, fresh.guard.unweighted) == (3, 2, True)
    old = {k: v for k, v in state.items() if k != "guard"}
    again, _ = _method(McpmParams(), loop)
    again.load_state_dict(old)
    assert (again.guard.streak, again.guard.collapses, again.guard.unweighted) == (0, 0, False)
