"""ONNX Runtime sessions: pick an execution provider that can actually run, load and check graphs.

onnxruntime-gpu lists CUDAExecutionProvider even on a machine without a GPU, and creating a CUDA session
there logs a loud error before falling back to CPU. So the GPU is probed first (the CUDA driver through
ctypes: cuInit + cuDeviceGetCount) and CUDA is only asked for when a device is really there.

TensorRT is not selected automatically: it builds an engine per input shape, and scoring feeds one shape
per case (padded in-plane size), so engine builds would dominate; CUDA is the GPU provider.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MissingDependencyError, ModelError, UsageError

#: The distributions that install the `onnxruntime` module (dist-info folder spelling). Two of them in one
#: site-packages overwrite each other's files; uninstalling either then leaves a module without InferenceSession.
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime_gpu", "onnxruntime_directml", "onnxruntime_openvino")
#: ORT log severity: 0 verbose .. 4 fatal. 3 (errors only) keeps a CPU fallback quiet.
ORT_LOG_SEVERITY = 3
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
#: Names of the segmenter graph's inputs and outputs (the ONNX graph contract of design.md).
SEGMENTER_INPUTS = ("image", "noise")
SEGMENTER_OUTPUTS = ("prob_mean", "uncertainty")
#: MCPM's meta_weight.onnx: image float32 [N, C_in, H, W], label int64 [N, H, W], prob float32 [N, C, H, W] -> weight.
META_WEIGHT_INPUTS = ("image", "label", "prob")
META_WEIGHT_OUTPUTS = ("weight",)

_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


@dataclass(frozen=True)
class DeviceChoice:
    """Which provider to ask ONNX Runtime for. `reason` says why (shown to the user)."""

    provider: str  # CPUExecutionProvider | CUDAExecutionProvider
    device_id: int = 0
    reason: str = ""
    explicit: bool = False  # asked for by name: failing to start it is an error, not a fallback

    @property
    def label(self) -> str:
        """Short human name: 'cpu' or 'cuda:0'."""
        return "cpu" if self.provider == CPU else f"cuda:{self.device_id}"


def onnxruntime_install() -> str:
    """The pip command that installs ONNX Runtime here, as pyproject's markers choose it: onnxruntime-gpu on Linux
    x86_64 and Windows (it runs on CPU too), onnxruntime elsewhere and for the CPU-only install."""
    import platform

    if sys.platform == "win32" or (sys.platform.startswith("linux") and platform.machine() == "x86_64"):
        return "pip install onnxruntime-gpu   (or, for CPU only: pip install onnxruntime; never both)"
    return "pip install onnxruntime"


def _installed_runtimes(folders) -> list[str]:
    """'name version' of each ORT distribution registered in `folders` (a glob for dist-info folders:
    importlib.metadata would add 25 ms to every check)."""
    found = []
    for folder in folders:
        for info in Path(folder).glob("onnxruntime*.dist-info"):
            name, _, version = info.name[:-len(".dist-info")].partition("-")
            if name.lower() in ORT_DISTRIBUTIONS:
                found.append(f"{name.lower().replace('_', '-')} {version}")
    return sorted(found)


def import_onnxruntime():
    """The `onnxruntime` module, or MissingDependencyError (exit 5) naming the pip command that mends the install:
    missing, installed twice (onnxruntime and onnxruntime-gpu share one module) or left broken (uninstalling one
    of two removes files the other needs)."""
    reinstall = f"pip uninstall -y onnxruntime onnxruntime-gpu && {onnxruntime_install()}"
    try:
        import onnxruntime
    except ImportError as exc:
        registered = _installed_runtimes(dict.fromkeys(sys.path))
        if registered:  # pip thinks it is there: `pip install` alone would do nothing
            raise MissingDependencyError("ONNX Runtime (onnxruntime)", reinstall, problem=(
                f"is broken: {', '.join(registered)} is installed but `import onnxruntime` fails ({exc})")) from exc
        raise MissingDependencyError("ONNX Runtime (onnxruntime)", onnxruntime_install()) from exc
    runtimes = _installed_runtimes({Path(p).parent for p in getattr(onnxruntime, "__path__", [])})
    if len(runtimes) > 1:
        raise MissingDependencyError("ONNX Runtime", reinstall, problem=(
            f"is installed twice ({' and '.join(runtimes)}), and both write the one onnxruntime module"))
    if not hasattr(onnxruntime, "InferenceSession"):
        raise MissingDependencyError("ONNX Runtime (onnxruntime)", reinstall,
                                     problem="is broken: its module has no InferenceSession")
    return onnxruntime


def require_onnxruntime() -> None:
    """ONNX Runtime is what scores; without it `score` and `check` cannot run (MissingDependencyError, exit 5)."""
    import_onnxruntime()


def parse_device(device: str) -> tuple[str, int | None]:
    """'auto' | 'cpu' | 'cuda' | 'cuda:i' -> (kind, index or None); anything else is a UsageError."""
    match = _DEVICE.match(device.strip().lower())
    if not match or (match[1] != "cuda" and match[2] is not None):
        raise UsageError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    return match[1], (int(match[2]) if match[2] is not None else None)


def cuda_device_count() -> tuple[int, str]:
    """Number of CUDA devices the driver reports, and why it is 0 when it is (no exception, no output)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0, "CUDA_VISIBLE_DEVICES hides every GPU"
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    if sys.platform == "darwin":
        return 0, "no CUDA on macOS"
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return 0, "no NVIDIA driver (libcuda not found)"
    try:
        if lib.cuInit(0) != 0:
            return 0, "the NVIDIA driver found no usable GPU (cuInit failed)"
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0, "the NVIDIA driver could not count GPUs"
    except AttributeError:
        return 0, "libcuda lacks the driver API"
    return int(count.value), "" if count.value else "the NVIDIA driver reports no GPU"


def choose_device(device: str = "auto") -> DeviceChoice:
    """Resolve --device to a provider: CUDA when asked for (or, with auto, when it can run), else CPU.

    `cuda` without a usable GPU is a UsageError (exit 2); `cuda` with an ONNX Runtime build that lacks
    the CUDA provider is a MissingDependencyError (exit 5), and so is a missing or broken ONNX Runtime.
    """
    ort = import_onnxruntime()

    kind, index = parse_device(device)
    if kind == "cpu":
        return DeviceChoice(CPU, reason="--device cpu")
    has_provider = CUDA in ort.get_available_providers()
    if kind == "cuda" and not has_provider:
        raise MissingDependencyError("ONNX Runtime with CUDA (onnxruntime-gpu)", "pip install onnxruntime-gpu")
    if not has_provider:
        return DeviceChoice(CPU, reason="this ONNX Runtime build has no CUDA provider")
    count, why = cuda_device_count()
    wanted = index or 0
    if kind == "cuda":
        if count == 0:
            raise UsageError(f"--device {device}: no usable GPU ({why})", hint="use --device auto or --device cpu")
        if wanted >= count:
            raise UsageError(f"--device {device}: GPU {wanted} does not exist ({count} found)",
                             hint=f"use cuda:0 … cuda:{count - 1}")
        return DeviceChoice(CUDA, wanted, reason=f"--device {device}", explicit=True)
    if count == 0:
        return DeviceChoice(CPU, reason=why)
    return DeviceChoice(CUDA, 0, reason=f"{count} GPU(s) found")


#: The run option that hands the CPU arena's free chunks back to the system after a call (end of a case).
ARENA_SHRINKAGE = "memory.enable_memory_arena_shrinkage"
_shared_arena: list[bool] = []  # [registered?], once per process: ORT refuses a second registration


def usable_cpus() -> int:
    """The CPUs this process may run on (taskset, cgroup cpusets, SLURM): ONNX Runtime's intra-op threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def shared_cpu_arena() -> bool:
    """Register one CPU arena that every CPU session of this process allocates from (once; True when it is there).

    Each session otherwise keeps its own arena at its largest call: an ensemble of 3 folds held 3 of them.
    """
    import onnxruntime as ort

    if not _shared_arena:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's default arena
            _shared_arena.append(True)
        except Exception:  # an ORT without environment allocators: each session keeps its own arena
            _shared_arena.append(False)
    return _shared_arena[0]


def session_options(threads: int | None = None, severity: int = ORT_LOG_SEVERITY, provider: str = CPU):
    """ONNX Runtime session options for scoring, as measured on the U-Net segmenter (docs/decisions.md).

    All providers: every graph optimisation, one intra-op thread per usable CPU. CPU only: no memory pattern
    (it plans a second block beside the arena's from the second call on: twice the peak, no faster) and the
    process-wide shared arena (shared_cpu_arena). CUDA sessions keep ORT's own memory defaults.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(severity)
    options = ort.SessionOptions()
    options.log_severity_level = severity
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or usable_cpus()
    options.inter_op_num_threads = 1  # the graph is one chain of convolutions: nothing runs beside it
    if provider == CPU:
        options.enable_mem_pattern = False
        if shared_cpu_arena():
            options.add_session_config_entry("session.use_env_allocators", "1")
    return options


def run_options(release: bool = False):
    """Options of one call; `release`: give the CPU arena's free memory back afterwards (the case is done)."""
    import onnxruntime as ort

    options = ort.RunOptions()
    if release:
        options.add_run_config_entry(ARENA_SHRINKAGE, "cpu:0")
    return options


def _export_hint(run_dir: Path | None) -> str:
    return f"re-create it with: labelaudit export {run_dir if run_dir is not None else 'RUN_DIR'}"


def open_session(path: Path | str, choice: DeviceChoice, run_dir: Path | None = None):
    """Load an ONNX graph on `choice`'s provider; every failure is a ModelError naming the file.

    When CUDA was chosen by `auto` and ONNX Runtime cannot start it (e.g. cuDNN missing), the session
    falls back to CPU quietly; `session.get_providers()[0]` says which provider runs.
    """
    import onnxruntime as ort

    path = Path(path)
    hint = _export_hint(run_dir)
    if not path.is_file():
        raise ModelError(f"{path}: ONNX graph missing", hint=hint)
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty file (0 bytes), not an ONNX graph", hint=hint)
    providers: list = [CPU]
    if choice.provider == CUDA:
        providers = [(CUDA, {"device_id": choice.device_id}), CPU]
    # an automatic CUDA attempt logs only fatal messages: its failure is a quiet fallback, not an error
    quiet = choice.provider == CUDA and not choice.explicit
    options = session_options(severity=4 if quiet else ORT_LOG_SEVERITY, provider=choice.provider)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
        reason = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{path}: not a loadable ONNX graph ({reason})", hint=hint) from exc
    if choice.provider == CUDA and session.get_providers()[0] != CUDA and choice.explicit:
        raise ModelError(f"{path}: ONNX Runtime could not start the CUDA provider on GPU {choice.device_id}",
                         hint="check the CUDA/cuDNN libraries onnxruntime-gpu needs, or use --device cpu")
    return session


class Segmenter:
    """A loaded segmenter.onnx: (image (N, C_in, H, W), noise (K, C_in, H, W)) -> prob_mean, uncertainty.

    H, W must be multiples of the run's divisor; the caller pads and crops.
    """

    def __init__(self, path: Path | str, choice: DeviceChoice, in_channels: int, num_classes: int,
                 run_dir: Path | None = None, bound: bool | None = None) -> None:
        self.path = Path(path)
        self.run_dir = run_dir
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.session = open_session(self.path, choice, run_dir)
        self.provider = self.session.get_providers()[0]
        self._check_signature()
        # bound: run through IOBinding (the default on CUDA), so the noise bank is copied to the device once
        self.binding = NoiseBinding(self.session, choice.device_id if self.provider == CUDA else None) \
            if (self.provider == CUDA if bound is None else bound) else None

    def _check_signature(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        missing_in = [n for n in SEGMENTER_INPUTS if n not in inputs]
        missing_out = [n for n in SEGMENTER_OUTPUTS if n not in outputs]
        if missing_in or missing_out or len(inputs) != len(SEGMENTER_INPUTS):
            raise ModelError(
                f"{self.path}: graph inputs {sorted(inputs)} and outputs {outputs} do not follow the segmenter "
                f"contract (inputs {list(SEGMENTER_INPUTS)}, outputs {list(SEGMENTER_OUTPUTS)})",
                hint=_export_hint(self.run_dir))
        for name in SEGMENTER_INPUTS:
            shape = inputs[name].shape
            if len(shape) != 4:
                raise ModelError(f"{self.path}: input '{name}' has rank {len(shape)}, expected 4 ({shape})")
            if isinstance(shape[1], int) and shape[1] != self.in_channels:
                raise ModelError(f"{self.path}: input '{name}' takes {shape[1]} channels, but run.json declares "
                                 f"{self.in_channels}")
            if inputs[name].type != "tensor(float)":
                raise ModelError(f"{self.path}: input '{name}' is {inputs[name].type}, expected tensor(float)")

    def run(self, image: np.ndarray, noise: np.ndarray, release: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """image float32 (N, C_in, H, W), noise float32 (K, C_in, H, W) -> prob_mean (N, C, H, W), unc (N, H, W).

        release: hand the CPU arena's free memory back after this call (run_options)."""
        try:
            if self.binding is not None:
                prob, unc = self.binding.run(image, noise, run_options(release))
            else:
                prob, unc = self.session.run(list(SEGMENTER_OUTPUTS), {"image": image, "noise": noise},
                                             run_options(release))
        except Exception as exc:  # shape errors inside the graph surface here
            reason = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path}: inference failed on input {tuple(image.shape)} ({reason})") from exc
        n, _, h, w = image.shape
        if prob.shape != (n, self.num_classes, h, w) or unc.shape != (n, h, w):
            raise ModelError(f"{self.path}: outputs prob_mean {prob.shape} and uncertainty {unc.shape}, expected "
                             f"{(n, self.num_classes, h, w)} and {(n, h, w)} ({self.num_classes} classes in run.json)")
        return prob, unc


class NoiseBinding:
    """Segmenter calls through ONNX Runtime's IOBinding: the noise bank lives on the device between calls.

    session.run copies every input to the GPU at every call; the K perturbations are the same for every batch
    of a case (and of every case of that in-plane size), so they are copied once and bound by reference.
    The image goes in per call; the outputs are bound to host memory, where scoring reads them.
    device_id: the CUDA device, or None for a CPU session (the same path, used by the tests).
    """

    #: device copies kept: one per chunk of passes of the current bank (plan_calls' chunks)
    MAX_KEPT = 16

    def __init__(self, session, device_id: int | None) -> None:
        self.session = session
        self.device = ("cuda", device_id) if device_id is not None else ("cpu", 0)
        self._on_device: dict[tuple, tuple[np.ndarray, object]] = {}
        self.uploads = 0

    def noise_value(self, noise: np.ndarray):
        """The device copy of `noise`, made on first use. The cache holds the array itself, so its address
        cannot be reused by another bank while its copy is kept."""
        import onnxruntime as ort

        key = (noise.__array_interface__["data"][0], noise.shape, noise.strides)
        if key not in self._on_device:
            if len(self._on_device) >= self.MAX_KEPT:
                self._on_device.clear()
            contiguous = np.ascontiguousarray(noise, dtype=np.float32)
            self._on_device[key] = (noise, ort.OrtValue.ortvalue_from_numpy(contiguous, *self.device))
            self.uploads += 1
        return self._on_device[key][1]

    def run(self, image: np.ndarray, noise: np.ndarray, options) -> tuple[np.ndarray, np.ndarray]:
        binding = self.session.io_binding()
        binding.bind_cpu_input("image", np.ascontiguousarray(image, dtype=np.float32))
        binding.bind_ortvalue_input("noise", self.noise_value(noise))
        for name in SEGMENTER_OUTPUTS:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding, options)
        prob, unc = binding.copy_outputs_to_cpu()  # in SEGMENTER_OUTPUTS' order
        return prob, unc


class MetaWeighter:
    """A loaded meta_weight.onnx (MCPM): (image, label, prob) -> the meta weight R (N, H, W) in [0, 1].

    image float32 (N, C_in, H, W), label int64 class indices (N, H, W), prob float32 (N, C, H, W), all on the
    padded network grid (H, W multiples of the run's divisor), as the segmenter saw them.
    """

    def __init__(self, path: Path | str, choice: DeviceChoice, in_channels: int, num_classes: int,
                 run_dir: Path | None = None) -> None:
        self.path = Path(path)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.session = open_session(self.path, choice, run_dir)
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != set(META_WEIGHT_INPUTS) or outputs != list(META_WEIGHT_OUTPUTS):
            raise ModelError(
                f"{self.path}: graph inputs {sorted(inputs)} and outputs {outputs} do not follow the meta-weight "
                f"contract (inputs {list(META_WEIGHT_INPUTS)}, outputs {list(META_WEIGHT_OUTPUTS)})",
                hint=_export_hint(run_dir))
        if inputs["label"].type != "tensor(int64)":
            raise ModelError(f"{self.path}: input 'label' is {inputs['label'].type}, expected tensor(int64)")

    def run(self, image: np.ndarray, label: np.ndarray, prob: np.ndarray, release: bool = False) -> np.ndarray:
        """R float32 (N, H, W) for image (N, C_in, H, W), label int64 (N, H, W), prob (N, C, H, W)."""
        try:
            feeds = {"image": image, "label": label.astype(np.int64, copy=False),
                     "prob": prob.astype(np.float32, copy=False)}
            (weight,) = self.session.run(list(META_WEIGHT_OUTPUTS), feeds, run_options(release))
        except Exception as exc:
            reason = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path}: inference failed on input {tuple(image.shape)} ({reason})") from exc
        n, _, h, w = image.shape
        if weight.shape != (n, 1, h, w):
            raise ModelError(f"{self.path}: output weight {weight.shape}, expected {(n, 1, h, w)}")
        return weight[:, 0]
