"""`labelaudit export`: ONNX graphs from safetensors weights, verified with ONNX Runtime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from labelaudit.errors import ModelError  # noqa: E402
from labelaudit.config import NetParams  # noqa: E402
from labelaudit.train.export import export_run, export_segmenter  # noqa: E402
from labelaudit.train.weights import load_weights, save_weights  # noqa: E402
from labelaudit.train.nets import PerturbedSegmenter, build_unet  # noqa: E402
from labelaudit.formats.run import Perturbations, load_run, perturbation_noise  # noqa: E402

SMALL = NetParams(features=(4, 8, 8, 8, 8, 4), groups=4)


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory) -> Path:
    """A finished 1-fold plain run (tiny), copied per test where a test changes it."""
    from dataclasses import replace

    from labelaudit.config import FitConfig, LoopParams
    from labelaudit.train.fit import fit_dataset
    from labelaudit.synth import SynthConfig, write_synth_dataset

    work = tmp_path_factory.mktemp("exportrun")
    data = write_synth_dataset(work / "data", SynthConfig(cases=2, size=(24, 20, 4)))
    config = FitConfig(dataset=data, out=work / "run", method="plain", folds=1, device="cpu", calibrate=False,
                       exporter="torchscript", net=SMALL,
                       loop=replace(LoopParams(), epochs=1, iterations_per_epoch=1, batch_size=2))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        return fit_dataset(config)


@pytest.fixture
def run_copy(fitted_run, tmp_path) -> Path:
    return Path(shutil.copytree(fitted_run, tmp_path / "run"))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_graph_contract_and_parity(exporter, tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    net = build_unet(2, 3, SMALL).eval()
    path = tmp_path / "segmenter.onnx"
    record = export_segmenter(net, 3, 2, path, Perturbations(k=3), exporter=exporter)
    assert record["exporter"] == exporter and record["opset"] == 18 and record["max_abs_diff"] < 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "noise"]
    assert [o.name for o in session.get_outputs()] == ["prob_mean", "uncertainty"]
    # dynamic N, K, H, W: a batch, a noise bank and a size the export never saw
    image = np.random.default_rng(0).normal(size=(4, 2, 16, 64)).astype(np.float32)
    noise = perturbation_noise(Perturbations(k=5), 2, 16, 64)
    prob, unc = session.run(None, {"image": image, "noise": noise})
    with torch.no_grad():
        want_prob, want_unc = PerturbedSegmenter(net, 3)(torch.from_numpy(image), torch.from_numpy(noise))
    assert prob.shape == (4, 3, 16, 64) and unc.shape == (4, 16, 64)
    assert np.abs(prob - want_prob.numpy()).max() < 1e-4 and np.abs(unc - want_unc.numpy()).max() < 1e-4


def test_dynamo_takes_over_where_the_torchscript_exporter_fails(tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def torchscript_removed(*args, dynamo, **kwargs):
        if not dynamo:
            raise AttributeError("the TorchScript exporter was removed")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", torchscript_removed)
    record = export_segmenter(build_unet(1, 2, SMALL), 2, 1, tmp_path / "s.onnx", Perturbations(k=2), "torchscript")
    assert record["exporter"] == "dynamo" and record["max_abs_diff"] < 1e-4


def test_parity_failure_is_a_model_error_and_leaves_no_file(tmp_path, monkeypatch):
    import labelaudit.train.export as export

    monkeypatch.setattr(export, "verify_segmenter", lambda *a, **k: 0.5)
    with pytest.raises(ModelError, match="differs from PyTorch by 5.00e-01"):
        export_segmenter(build_unet(1, 2, SMALL), 2, 1, tmp_path / "s.onnx", Perturbations(), "torchscript")
    assert list(tmp_path.iterdir()) == []


def test_export_run_recreates_a_missing_graph(run_copy, cli):
    (run_copy / "fold_0" / "segmenter.onnx").unlink()
    with pytest.raises(ModelError, match="ONNX graph missing"):
        load_run(run_copy)
    result = cli("export", run_copy)
    assert result.exit_code == 0, result.stderr
    assert "segmenter.onnx: opset 18, torchscript exporter" in result.stdout
    info = load_run(run_copy)
    assert info.models[0].export["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage"])
def test_damaged_weights_are_a_model_error_naming_the_file(run_copy, cli, damage):
    weights = run_copy / "fold_0" / "weights.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage == "delete":
        weights.unlink()
    else:
        weights.write_bytes(b"not safetensors at all" * 10)
    with pytest.raises(ModelError, match="weights.safetensors: weights file"):
        export_run(run_copy)
    result = cli("export", run_copy)
    assert result.exit_code == 4 and "weights.safetensors" in result.stderr


def test_weights_of_another_network_are_refused(run_copy):
    save_weights(build_unet(1, 5, SMALL), run_copy / "fold_0" / "weights.safetensors")
    with pytest.raises(ModelError, match="do not fit the network described in run.json"):
        export_run(run_copy)


def test_export_of_a_folder_that_is_not_a_run(tmp_path, cli):
    result = cli("export", tmp_path / "nowhere")
    assert result.exit_code == 4 and "run folder not found" in result.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="run.json: missing"):
        export_run(tmp_path / "empty")


def test_weights_round_trip(tmp_path):
    net = build_unet(1, 2, SMALL)
    save_weights(net, tmp_path / "w.safetensors", {"role": "network"})
    state = load_weights(tmp_path / "w.safetensors")
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    run_json = json.dumps({"k": 1})  # weights are never a pickle: the file starts with a JSON header
    assert (tmp_path / "w.safetensors").read_bytes()[8:9] == b"{" and run_json
