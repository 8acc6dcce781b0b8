"""`torchrun --nproc_per_node 2 -m labelaudit fit` on CPU (gloo).

With two folds, the folds are spread over the two processes: the run folder is complete and scoreable; two
2-process runs with one seed give identical weights, and those of a one-process run with the same CPU
threads (torchrun sets OMP_NUM_THREADS=1 per process). With one fold, both processes train it together under
DistributedDataParallel, reproducibly, for every method (train() checks that the members end in step).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from labelaudit.formats.run import load_run  # noqa: E402
from labelaudit.synth import SynthConfig, write_synth_dataset  # noqa: E402

pytestmark = pytest.mark.slow

ARGS = ("--method", "plain", "--folds", "2", "--epochs", "1", "--iterations-per-epoch", "3", "--batch-size", "2",
        "--features", "4,8,8,8,8,4", "--device", "cpu", "--exporter", "torchscript")
#: one fold, two epochs (PINT's teacher and MCPM's meta steps start after their warm-up)
TOGETHER = ("--folds", "1", "--epochs", "2", "--iterations-per-epoch", "3", "--batch-size", "2",
            "--features", "4,8,8,8,8,4", "--device", "cpu", "--exporter", "torchscript")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "labelaudit"]

needs_gloo = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is needed")


def _fit(command: list[str], dataset: Path, out: Path, cwd: Path, args=ARGS) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, "fit", str(dataset), "--out", str(out), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _weights(run: Path, folds=("fold_0", "fold_1")) -> dict:
    from safetensors.torch import load_file

    return {f: load_file(run / f / "weights.safetensors") for f in folds}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[f][k], b[f][k]) for f in a for k in a[f])


@needs_gloo
def test_two_processes_train_the_folds_reproducibly_and_the_run_scores(tmp_path):
    from labelaudit.config import ScoreConfig
    from labelaudit.score.pipeline import score_dataset

    dataset = write_synth_dataset(tmp_path / "Dataset005_Ddp", SynthConfig(cases=4, size=(40, 36, 4), classes=2))
    first = _fit(TORCHRUN, dataset, tmp_path / "a", tmp_path)
    _fit(TORCHRUN, dataset, tmp_path / "b", tmp_path)
    _fit([sys.executable, "-m", "labelaudit"], dataset, tmp_path / "one", tmp_path)

    assert first.stdout.count("run folder:") == 1  # rank 0 reports, rank 1 stays quiet
    info = load_run(tmp_path / "a")
    assert info.status is None and [m.fold for m in info.models] == [0, 1] and info.threshold is not None
    assert info.extra["distributed"] == {"processes": 2, "backend": "gloo", "ranks_per_fold": 1,
                                         "folds_by_rank": [[0], [1]]}
    for model in info.models:
        assert (tmp_path / "a" / model.segmenter).is_file() and model.export["max_abs_diff"] < 1e-4
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "one"))  # the fold, not the rank, decides
    audit = score_dataset(ScoreConfig(run_dir=tmp_path / "a", out_dir=tmp_path / "audit", device="cpu"))
    assert len(audit.cases) == 4 and (tmp_path / "audit" / "slices.csv").is_file()


@needs_gloo
def test_two_processes_train_one_fold_together_with_ddp_reproducibly(tmp_path):
    from labelaudit.config import ScoreConfig
    from labelaudit.score.pipeline import score_dataset

    dataset = write_synth_dataset(tmp_path / "Dataset006_Ddp", SynthConfig(cases=3, size=(40, 36, 4), classes=2))
    args = ("--method", "plain", *TOGETHER)
    first = _fit(TORCHRUN, dataset, tmp_path / "a", tmp_path, args)
    _fit(TORCHRUN, dataset, tmp_path / "b", tmp_path, args)

    assert first.stdout.count("run folder:") == 1
    info = load_run(tmp_path / "a")
    assert info.extra["distributed"] == {"processes": 2, "backend": "gloo", "ranks_per_fold": 2,
                                         "folds_by_rank": [[0], [0]], "ddp_backend": "gloo"}
    assert info.status is None and len(info.models) == 1 and info.threshold is not None
    assert [row["epoch"] for row in info.log["fold_0"]] == [1, 2]
    assert _same(_weights(tmp_path / "a", ["fold_0"]), _weights(tmp_path / "b", ["fold_0"]))
    audit = score_dataset(ScoreConfig(run_dir=tmp_path / "a", out_dir=tmp_path / "audit", device="cpu"))
    assert len(audit.cases) == 3


@needs_gloo
@pytest.mark.parametrize("method", ["pint", "mcpm"])
def test_seed_methods_train_one_fold_together_with_ddp(tmp_path, method):
    dataset = write_synth_dataset(tmp_path / "Dataset007_Ddp", SynthConfig(cases=3, size=(40, 36, 4), classes=2))
    extra = ()
    if method == "mcpm":
        (tmp_path / "meta.txt").write_text("case_000\n")
        extra = ("--meta-set", str(tmp_path / "meta.txt"))
    # train() raises when the members' weights differ at the end: PINT's teacher memory and MCPM's meta
    # steps (Theta's averaged gradients, the collapse guard's team-wide foreground mean) stay in step
    _fit(TORCHRUN, dataset, tmp_path / "run", tmp_path, ("--method", method, *TOGETHER, *extra))
    info = load_run(tmp_path / "run")
    assert info.status is None and info.extra["distributed"]["ranks_per_fold"] == 2
    log = info.log["fold_0"]
    assert len(log) == 2 and all(row["loss"] == row["loss"] for row in log)
    if method == "mcpm":
        assert "meta_loss" in log[-1]  # the meta steps ran
    else:
        assert log[-1]["warmup"] < 1  # the teacher's passes ran

