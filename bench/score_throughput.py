"""Scoring speed and memory: ONNX Runtime against PyTorch eager, and `score` on a CT-like 512×512×N case.

    python bench/score_throughput.py [--slices 64] [--size 256] [--k 1 4] [--batch 16]
    python bench/score_throughput.py --ct 300 [--model RUN_DIR] [--threads 1] [--results]
    python bench/score_throughput.py --ct 12 --cases 3 [--pairs 2] [--threads 2] [--results]

Without --ct: a Markdown table of slices/s, eager against ORT, for labelaudit.train.nets' U-Net inside the
PerturbedSegmenter (the graph `score` runs), exported with torch.onnx.export (TorchScript exporter, dynamic axes)
and run through labelaudit.score.providers.Segmenter, i.e. with the session options scoring uses. Both runtimes
get the same threads and noise bank; each figure is the best of `--repeats` timed passes after one warm-up batch.

--ct N: writes a CT-like case of SIZE×SIZE×N (bench/inspect_memory.ct_like), runs `labelaudit score` on it in a
child process pinned to --threads CPUs (ORT takes one thread per usable CPU) and reads the child's peak resident
memory (os.wait4) and its timings (summary.json). The run is --model, or by default one fold of the shipped
models/demo-pint (one model's K passes a slice; an ensemble of F folds costs F times as much). Then: the
network's arithmetic per slice (Conv and ConvTranspose MACs, counted by forward hooks on the torch model of the
run's NetParams) × K passes, against this machine's sgemm rate (a numpy float32 2048² matmul on the same
threads), and ORT against eager on that graph at SIZE² (--eager-slices slices). --results writes the section
"Scoring memory and speed on a CT" of bench/RESULTS.md (replacing an earlier one).

--ct N --cases M (M > 1): M such cases, scored in children as above through score_dataset, in --pairs pairs of
one run with each case's outputs written in the background while the next case is scored (the default) and one
with them written before it (overlap_writes=False), in turn; the whole audit's slices/s (summary.json total_s,
start-up excluded) of each run and their ratio pair by pair. --results writes its own section of RESULTS.md.
A benchmark: asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
SHIPPED = HERE.parent / "models" / "demo-pint"
TITLE = "## Scoring memory and speed on a CT (`python bench/score_throughput.py --ct N`)"
WRITER_TITLE = "## Writes overlapped with scoring (`python bench/score_throughput.py --ct N --cases M`)"
TARGET_MB = 2048


def build_segmenter(in_channels: int, num_classes: int, features: tuple[int, ...] | None = None):
    """(PerturbedSegmenter of a randomly initialised U-Net of `features` (default NetParams), its description)."""
    from labelaudit.config import NetParams
    from labelaudit.train.nets import PerturbedSegmenter, build_unet

    params = NetParams(features=tuple(features)) if features else NetParams()
    net = build_unet(in_channels, num_classes, params)
    return PerturbedSegmenter(net, num_classes).eval(), f"labelaudit.train.nets {params.features}"


def export(model, path: Path, in_channels: int, size: int) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore", category=UserWarning)  # tracer notes about shape asserts, not errors
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    image = torch.zeros(2, in_channels, size, size)
    noise = torch.zeros(2, in_channels, size, size)
    torch.onnx.export(
        model, (image, noise), str(path), input_names=["image", "noise"],
        output_names=["prob_mean", "uncertainty"], opset_version=17, dynamo=False,
        dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}, "noise": {0: "K", 2: "H", 3: "W"},
                      "prob_mean": {0: "N", 2: "H", 3: "W"}, "uncertainty": {0: "N", 1: "H", 2: "W"}},
    )


def timed(run, slices: np.ndarray, batch: int, repeats: int) -> float:
    """Best slices/second over `repeats` passes through all slices, after one warm-up batch."""
    run(slices[:batch])
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(slices), batch):
            run(slices[i:i + batch])
        best = max(best, len(slices) / (time.perf_counter() - start))
    return best


def eager_vs_ort(ks, slices: int, size: int, batch: int, repeats: int, classes: int, threads: int,
                 features: tuple[int, ...] | None = None) -> tuple[list[tuple], str]:
    """[(K, eager slices/s, ORT slices/s, max abs diff)] on random slices, and the network's description."""
    import torch

    from labelaudit.config import Perturbations
    from labelaudit.formats.run import perturbation_noise
    from labelaudit.score.providers import Segmenter, choose_device

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model, source = build_segmenter(1, classes, features)
    data = np.random.default_rng(0).normal(size=(slices, 1, size, size)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "segmenter.onnx"
        export(model, path, 1, min(size, 64))
        ort = Segmenter(path, choose_device("cpu"), 1, classes)
        for k in ks:
            noise = perturbation_noise(Perturbations(k=k), 1, size, size)
            noise_t = torch.from_numpy(noise)

            def run_torch(part: np.ndarray):
                with torch.inference_mode():
                    return model(torch.from_numpy(part), noise_t)

            def run_ort(part: np.ndarray):
                return ort.run(part, noise)

            diff = float(np.abs(run_torch(data[:1])[0].numpy() - run_ort(data[:1])[0]).max())
            rows.append((k, timed(run_torch, data, batch, repeats), timed(run_ort, data, batch, repeats), diff))
    return rows, source


def conv_macs(features: tuple[int, ...] | None, in_channels: int, classes: int, size: int) -> int:
    """Multiply-accumulates of every Conv/ConvTranspose of one pass of the U-Net on a size×size slice."""
    import torch

    model, _ = build_segmenter(in_channels, classes, features)
    total = [0]

    def hook(module, inputs, output):
        kernel = int(np.prod(module.kernel_size)) * module.in_channels * module.out_channels // module.groups
        pixels = output[0, 0].numel() if isinstance(module, torch.nn.Conv2d) else inputs[0][0, 0].numel()
        total[0] += kernel * pixels * output.shape[0]

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.register_forward_hook(hook)
    with torch.inference_mode():
        model.net(torch.zeros(1, in_channels, size, size))
    return total[0]


def sgemm_gflops(cpus: list[int]) -> float:
    """GFLOP/s of numpy's float32 2048² matmul on `cpus` (a child pinned there, BLAS told as many threads)."""
    code = ("import time, numpy as np\n"
            "a, b = (np.random.default_rng(i).standard_normal((2048, 2048), dtype=np.float32) for i in (0, 1))\n"
            "a @ b\nbest = float('inf')\n"
            "for _ in range(3):\n    t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)\n"
            "print(2 * 2048 ** 3 / best / 1e9)")
    env = {**os.environ, **{v: str(len(cpus)) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    return float(out.stdout.strip())


def one_fold_run(source: Path, target: Path) -> Path:
    """A copy of `source` keeping its first fold model only (scored on new data, it is the whole ensemble)."""
    info = json.loads((source / "run.json").read_text())
    keep = info["models"][0]
    target.mkdir(parents=True)
    (target / Path(keep["segmenter"]).parent).mkdir(parents=True)
    shutil.copy2(source / keep["segmenter"], target / keep["segmenter"])
    info["models"], info["folds"] = [keep], (info.get("folds") or [[]])[:1]
    (target / "run.json").write_text(json.dumps(info, indent=1))
    return target


def write_ct(root: Path, info: dict, size: int, slices: int, cases: int = 1) -> Path:
    """An nnU-Net dataset of `cases` CT-like size×size×slices volumes whose dataset.json matches the run."""
    from inspect_memory import ct_like

    from labelaudit.io.image import write_volume
    from labelaudit.types import Geometry, Volume

    values, names = info["classes"]["values"], info["classes"]["names"]
    geometry = Geometry((size, size, slices), (0.78, 0.78, 2.5), (-200.0, -180.0, -600.0),
                        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    for i in range(cases):
        image, label = ct_like((size, size, slices), np.random.default_rng(i))
        label = np.where(label > 0, values[1], values[0]).astype(np.uint8)
        write_volume(Volume(image, geometry), root / "imagesTr" / f"ct_{i:03d}_0000.nii.gz")
        write_volume(Volume(label, geometry), root / "labelsTr" / f"ct_{i:03d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": root.name, "channel_names": {str(i): n for i, n in enumerate(info["channel_names"])},
        "labels": dict(zip(names, values)), "numTraining": cases, "file_ending": ".nii.gz"}))
    return root


#: `score` through the library (argv: dataset, run, out, batch size, overlap 1/0), for the --cases comparison.
SCORE_CHILD = """import sys
from pathlib import Path
from labelaudit.config import ScoreConfig
from labelaudit.score.pipeline import score_dataset
data, run, out, batch, overlap = sys.argv[1:]
score_dataset(ScoreConfig(run_dir=Path(run), dataset=Path(data), out_dir=Path(out), device="cpu",
                          batch_size=int(batch)), overlap_writes=overlap == "1")
"""


def measure_score(data: Path, run: Path, out: Path, cpus: list[int], batch: int,
                  overlap: bool | None = None) -> tuple[float, float, dict]:
    """(peak RSS MB, wall s, summary.json timings) of `labelaudit score` in a child pinned to `cpus`; with
    `overlap` True or False, of score_dataset(overlap_writes=overlap) instead of the command."""
    if overlap is None:
        command = [sys.executable, "-m", "labelaudit", "score", str(data), "--model", str(run), "--device", "cpu",
                   "--out", str(out), "--batch-size", str(batch)]
    else:
        command = [sys.executable, "-c", SCORE_CHILD, str(data), str(run), str(out), str(batch), str(int(overlap))]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as output:
        child = subprocess.Popen(command, stdout=output, stderr=output, text=True,
                                 preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the maximum over all children
        elapsed = time.perf_counter() - started
        output.seek(0)
        tail = output.read()[-3000:]
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"score failed:\n{tail}")
    timings = json.loads((out / "summary.json").read_text()).get("timings", {})
    return usage.ru_maxrss / 2**10, elapsed, timings


def ct_benchmark(args) -> str:
    from pint_audit import machine

    from labelaudit.score.inference import CALL_MEMORY_BYTES

    cpus = sorted(os.sched_getaffinity(0))[:args.threads]
    with tempfile.TemporaryDirectory(prefix="score_ct_") as tmp:
        work = args.keep or Path(tmp)
        run = args.model or one_fold_run(SHIPPED, work / "run")
        info = json.loads((Path(run) / "run.json").read_text())
        data = write_ct(work / "Dataset920_ScoreCt", info, args.size, args.ct)
        peak, wall, timings = measure_score(data, Path(run), work / "audit", cpus, args.batch)
    k = int(info["perturbations"]["k"])
    features = tuple((info.get("config", {}).get("net") or {}).get("features") or ()) or None
    classes, c_in = len(info["classes"]["values"]), len(info["channel_names"])
    models = len(info["models"])
    macs = conv_macs(features, c_in, classes, args.size)
    sgemm = sgemm_gflops(cpus)
    ceiling = sgemm * 1e9 / (2 * macs * k * models)  # slices/s if every FLOP ran at sgemm speed
    inference = args.ct / timings["inference_s"] if timings.get("inference_s") else 0.0
    overall = args.ct / timings["total_s"] if timings.get("total_s") else 0.0
    rows, net = eager_vs_ort([k], args.eager_slices, args.size, 1, 1, classes, len(cpus), features)
    _, eager, ort, diff = rows[0]
    lines = [
        TITLE, "",
        f"- date: {dt.date.today().isoformat()}; machine: {machine()}; {len(cpus)} CPU(s) given to the child "
        f"(ORT intra-op threads = usable CPUs; load from other jobs makes speeds noisy)",
        f"- case: CT-like {args.size}×{args.size}×{args.ct} int16 .nii.gz; run: "
        f"{args.model or 'one fold of models/demo-pint'} ({net}, {models} model(s), K = {k}); --batch-size "
        f"{args.batch}; ORT call budget "
        f"{CALL_MEMORY_BYTES / 2**20:.0f} MiB",
        "", "| measure | value |", "| --- | --- |",
        f"| peak RSS of `labelaudit score` | **{peak:.0f} MB** (target < {TARGET_MB} MB) |",
        f"| wall, whole command | {wall:.0f} s |",
        f"| slices/s, inference only | {inference:.2f} |",
        f"| slices/s, whole audit (read, infer, score, write) | {overall:.2f} |",
        f"| Conv MACs a pass at {args.size}² | {macs / 1e9:.2f} G ({2 * macs * k * models / 1e9:.0f} GFLOP a slice) |",
        f"| sgemm float32 2048², same CPUs | {sgemm:.1f} GFLOP/s |",
        f"| arithmetic ceiling | {ceiling:.2f} slices/s; inference reaches **{inference / ceiling:.0%}** |",
        f"| ORT vs PyTorch eager, same graph, {args.size}², K = {k} | {ort:.2f} vs {eager:.2f} slices/s: "
        f"**{ort / eager:.2f}×** (max abs diff {diff:.1e}) |",
        f"| time split (s) | read {timings.get('read_s', 0):.1f}, inference {timings.get('inference_s', 0):.1f}, "
        f"scoring {timings.get('scoring_s', 0):.1f}, write {timings.get('write_s', 0):.1f} |",
    ]
    return "\n".join(lines) + "\n"


def writer_benchmark(args) -> str:
    """The whole audit's slices/s of --cases CT-like cases, writes overlapped against serial, in --pairs pairs."""
    from pint_audit import machine

    cpus = sorted(os.sched_getaffinity(0))[:args.threads]
    slices = args.cases * args.ct
    rows = []
    with tempfile.TemporaryDirectory(prefix="score_writer_") as tmp:
        work = args.keep or Path(tmp)
        run = args.model or one_fold_run(SHIPPED, work / "run")
        info = json.loads((Path(run) / "run.json").read_text())
        data = write_ct(work / "Dataset921_ScoreWriter", info, args.size, args.ct, args.cases)
        for pair in range(args.pairs):
            row = {}
            for overlap in (True, False) if pair % 2 == 0 else (False, True):  # ABBA: drift hits both alike
                out = work / f"audit_{pair}_{int(overlap)}"
                peak, wall, timings = measure_score(data, Path(run), out, cpus, args.batch, overlap)
                shutil.rmtree(out, ignore_errors=True)
                row[overlap] = (slices / timings["total_s"], peak, timings)
                print(f"pair {pair + 1}, {'overlapped' if overlap else 'serial'}: {row[overlap][0]:.3f} slices/s, "
                      f"{peak:.0f} MB, timings {timings}", file=sys.stderr)
            rows.append(row)
    ratios = [r[True][0] / r[False][0] for r in rows]
    lines = [
        WRITER_TITLE, "",
        f"- date: {dt.date.today().isoformat()}; machine: {machine()}; {len(cpus)} CPU(s) given to each child "
        f"(ORT intra-op threads = usable CPUs; the writer and the reader are one thread each on top)",
        f"- {args.cases} CT-like cases of {args.size}×{args.size}×{args.ct} int16 .nii.gz ({slices} slices); run: "
        f"{args.model or 'one fold of models/demo-pint'} (K = {info['perturbations']['k']}); --batch-size "
        f"{args.batch}; slices/s = slices / summary.json total_s (start-up excluded); pairs in ABBA order",
        "", "| pair | overlapped (slices/s) | serial (slices/s) | overlapped / serial | write_s, write_wait_s "
            "(overlapped) | write_s (serial) | peak RSS overlapped / serial (MB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, (r, ratio) in enumerate(zip(rows, ratios), start=1):
        (fast, peak_a, a), (slow, peak_b, b) = r[True], r[False]
        lines.append(f"| {i} | {fast:.3f} | {slow:.3f} | {ratio:.3f}× | {a['write_s']:.1f}, {a['write_wait_s']:.1f} "
                     f"| {b['write_s']:.1f} | {peak_a:.0f} / {peak_b:.0f} |")
    lines.append(f"\nMedian ratio overlapped / serial: **{float(np.median(ratios)):.3f}×** over {len(ratios)} "
                 f"pair(s).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=None, help="in-plane pixels (default 256; 512 with --ct)")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--ct", type=int, metavar="N", help="score a CT-like SIZE×SIZE×N case (see above)")
    parser.add_argument("--cases", type=int, default=1, help="--ct: score this many cases, writes overlapped "
                                                             "against serial (see above)")
    parser.add_argument("--pairs", type=int, default=2, help="--cases: pairs of runs (overlapped, serial)")
    parser.add_argument("--model", type=Path, help="the run folder --ct scores with (default: one demo fold)")
    parser.add_argument("--eager-slices", type=int, default=2, help="slices of the --ct eager/ORT comparison")
    parser.add_argument("--keep", type=Path, help="--ct: work here and keep it (default: a temp dir)")
    parser.add_argument("--results", action="store_true", help=f"--ct: write its section of {RESULTS}")
    args = parser.parse_args()

    if args.ct:
        args.size = args.size or 512
        title, section = (WRITER_TITLE, writer_benchmark(args)) if args.cases > 1 else (TITLE, ct_benchmark(args))
        print(section)
        if args.results:
            from pint_audit import write_section

            write_section(RESULTS, title, section + "\n")
        return

    import onnxruntime
    import torch

    args.size = args.size or 256
    rows, source = eager_vs_ort(args.k, args.slices, args.size, args.batch, args.repeats, args.classes,
                                args.threads)
    print(f"Scoring throughput, {args.slices} slices of {args.size}×{args.size}, batch {args.batch} slices, "
          f"{args.classes} classes; network: {source}.")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, {args.threads} "
          f"threads; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
          f"{time.strftime('%Y-%m-%d')}.\n")
    print("| K (passes) | PyTorch eager (slices/s) | ONNX Runtime (slices/s) | ORT / eager | max abs diff prob |")
    print("| --- | --- | --- | --- | --- |")
    for k, eager, onnx_rt, diff in rows:
        print(f"| {k} | {eager:.1f} | {onnx_rt:.1f} | {onnx_rt / eager:.2f}× | {diff:.1e} |")


if __name__ == "__main__":
    main()
