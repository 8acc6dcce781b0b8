"""labelaudit.score.providers: --device parsing, the provider choice and its reason, loading and checking graphs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from labelaudit.errors import MissingDependencyError, ModelError, UsageError  # noqa: E402
from labelaudit.score.providers import (  # noqa: E402
    CPU, CUDA, DeviceChoice, Segmenter, choose_device, cuda_device_count, open_session, parse_device,
)

# ----------------------------------------------------------------------------- --device


@pytest.mark.parametrize("text, parsed", [("auto", ("auto", None)), ("cpu", ("cpu", None)), (" CPU ", ("cpu", None)),
                                          ("cuda", ("cuda", None)), ("cuda:0", ("cuda", 0)), ("CUDA:12", ("cuda", 12))])
def test_parse_device(text, parsed):
    assert parse_device(text) == parsed


@pytest.mark.parametrize("text", ["gpu", "cpu:0", "auto:1", "cuda:", "cuda:-1", "cuda:x", ""])
def test_parse_device_refuses_anything_else_with_exit_2(text):
    with pytest.raises(UsageError, match="expected auto, cpu, cuda or cuda:N") as caught:
        parse_device(text)
    assert caught.value.exit_code == 2


def test_device_choice_labels():
    assert DeviceChoice(CPU).label == "cpu" and DeviceChoice(CUDA, 1).label == "cuda:1"


# ----------------------------------------------------------------------------- choosing a provider

def test_cpu_asked_for_is_cpu():
    choice = choose_device("cpu")
    assert (choice.provider, choice.reason, choice.explicit) == (CPU, "--device cpu", False)


def test_hidden_gpus_count_zero_and_say_why(monkeypatch):
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert cuda_device_count() == (0, "CUDA_VISIBLE_DEVICES hides every GPU")


def test_auto_on_this_machine_picks_a_provider_and_says_why():
    count, why = cuda_device_count()
    choice = choose_device("auto")
    assert choice.reason
    if count == 0:
        assert choice.provider == CPU and choice.device_id == 0 and not choice.explicit


def _providers(monkeypatch, available: list[str]) -> None:
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(available))


def test_auto_without_a_gpu_picks_cpu_and_says_why(monkeypatch):
    _providers(monkeypatch, [CUDA, CPU])  # onnxruntime-gpu installed ...
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # ... but no GPU to run on
    choice = choose_device("auto")
    assert (choice.provider, choice.reason) == (CPU, "CUDA_VISIBLE_DEVICES hides every GPU")
    with pytest.raises(UsageError, match=r"--device cuda: no usable GPU \(CUDA_VISIBLE_DEVICES hides every GPU\)"):
        choose_device("cuda")


def test_auto_with_a_cpu_only_runtime_picks_cpu_and_says_why(monkeypatch):
    _providers(monkeypatch, [CPU])
    choice = choose_device("auto")
    assert (choice.provider, choice.reason) == (CPU, "this ONNX Runtime build has no CUDA provider")
    with pytest.raises(MissingDependencyError, match="onnxruntime-gpu") as caught:
        choose_device("cuda:0")
    assert caught.value.exit_code == 5


# ----------------------------------------------------------------------------- opening graphs

@pytest.mark.parametrize("damage, message", [("missing", "ONNX graph missing"),
                                             ("empty", r"empty file \(0 bytes\), not an ONNX graph"),
                                             ("garbage", "not a loadable ONNX graph")])
def test_a_missing_or_invalid_graph_is_a_model_error_exit_4(tmp_path, damage, message):
    path = tmp_path / "run" / "fold_0" / "segmenter.onnx"
    path.parent.mkdir(parents=True)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    with pytest.raises(ModelError, match=message) as caught:
        open_session(path, DeviceChoice(CPU), run_dir=tmp_path / "run")
    assert caught.value.exit_code == 4
    assert str(path) in caught.value.message
    assert caught.value.hint == f"re-create it with: labelaudit export {tmp_path / 'run'}"


def test_a_valid_graph_runs_on_cpu(tmp_path, segmenter_graph):
    path = segmenter_graph(tmp_path / "segmenter.onnx", in_channels=1, num_classes=3)
    segmenter = Segmenter(path, DeviceChoice(CPU), in_channels=1, num_classes=3)
    assert segmenter.provider == CPU
    prob, unc = segmenter.run(np.zeros((2, 1, 16, 16), np.float32), np.zeros((2, 1, 16, 16), np.float32))
    assert prob.shape == (2, 3, 16, 16) and unc.shape == (2, 16, 16)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)


def test_a_graph_for_other_channels_or_classes_is_a_model_error(tmp_path, segmenter_graph):
    path = segmenter_graph(tmp_path / "segmenter.onnx", in_channels=1, num_classes=2)
    with pytest.raises(ModelError, match="input 'image' takes 1 channels, but run.json declares 2"):
        Segmenter(path, DeviceChoice(CPU), in_channels=2, num_classes=2)
    three = Segmenter(path, DeviceChoice(CPU), in_channels=1, num_classes=3)
    with pytest.raises(ModelError, match=r"\(3 classes in run.json\)"):
        three.run(np.zeros((1, 1, 16, 16), np.float32), np.zeros((2, 1, 16, 16), np.float32))


def test_a_graph_off_the_contract_is_a_model_error(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "segmenter.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what this ONNX Runtime reads
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="do not follow the segmenter contract"):
        Segmenter(path, DeviceChoice(CPU), in_channels=1, num_classes=2)


def test_iobinding_gives_the_same_outputs_and_copies_the_noise_once(tmp_path, segmenter_graph):
    # the CUDA path (IOBinding, noise bank kept on the device) run on a CPU session: same numbers as session.run
    path = segmenter_graph(tmp_path / "segmenter.onnx", in_channels=1, num_classes=3)
    plain = Segmenter(path, DeviceChoice(CPU), in_channels=1, num_classes=3)
    bound = Segmenter(path, DeviceChoice(CPU), in_channels=1, num_classes=3, bound=True)
    assert plain.binding is None and bound.binding is not None
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(4, 1, 16, 16)).astype(np.float32)
    for _ in range(3):
        image = rng.normal(size=(2, 1, 16, 16)).astype(np.float32)
        for chunk in (noise, noise[:2], noise[2:]):
            want_prob, want_unc = plain.run(image, chunk)
            prob, unc = bound.run(image, chunk, release=True)
            np.testing.assert_array_equal(prob, want_prob)
            np.testing.assert_array_equal(unc, want_unc)
    assert bound.binding.uploads == 3  # the whole bank and its two chunks, each once over three batches
