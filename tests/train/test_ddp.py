"""`torchrun --nproc_per_node 2 -m labelaudit fit`: folds spread over two CPU processes (gloo).

The run folder is complete and scoreable; two 2-process runs with one seed give identical weights, and
those of a one-process run with the same CPU threads (torchrun sets OMP_NUM_THREADS=1 per process).
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


def _fit(command: list[str], dataset: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, "fit", str(dataset), "--out", str(out), *ARGS], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return {f: load_file(run / f / "weights.safetensors") for f in ("fold_0", "fold_1")}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[f][k], b[f][k]) for f in a for k in a[f])


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is needed")
def test_two_processes_train_the_folds_reproducibly_and_the_run_scores(tmp_path):
    from labelaudit.config import ScoreConfig
    from labelaudit.score.pipeline import score_dataset

    dataset = write_synth_dataset(tmp_path / "Dataset005_Ddp", SynthConfig(cases=4, size=(40, 36, 4), classes=2))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "labelaudit"]
    first = _fit(torchrun, dataset, tmp_path / "a", tmp_path)
    _fit(torchrun, dataset, tmp_path / "b", tmp_path)
    _fit([sys.executable, "-m", "labelaudit"], dataset, tmp_path / "one", tmp_path)

    assert first.stdout.count("run folder:") == 1  # rank 0 reports, rank 1 stays quiet
    info = load_run(tmp_path / "a")
    assert info.status is None and [m.fold for m in info.models] == [0, 1] and info.threshold is not None
    assert info.extra["distributed"] == {"processes": 2, "backend": "gloo", "folds_by_rank": [[0], [1]]}
    for model in info.models:
        assert (tmp_path / "a" / model.segmenter).is_file() and model.export["max_abs_diff"] < 1e-4
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "one"))  # the fold, not the rank, decides
    audit = score_dataset(ScoreConfig(run_dir=tmp_path / "a", out_dir=tmp_path / "audit", device="cpu"))
    assert len(audit.cases) == 4 and (tmp_path / "audit" / "slices.csv").is_file()
