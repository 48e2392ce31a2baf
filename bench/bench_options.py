"""The speed-up options (`inference/speedups.py`) against eager, in one process, alternating.

Each form is a ModelManager of its own on the bench's weights with one set of options (`eager`: none),
loaded as the server loads it; its text-to-video pipeline is called in turn with the same request (the
endpoint's at 512×512, `--frames` frames, `--steps` steps), forms alternating `--repeats` times so that
drift in the machine's load hits all alike (a first round warms up, and compiles, and is dropped).
Reported per form: median wall and CPU seconds, the ratio to eager's (above 1: faster), and the largest
difference of its frames to eager's.

Compile time is measured across processes, as a restart meets it: a child process loads the compiled
form with an empty cache folder and times its first and second call (`cold`), then a second child does
the same over the folder the first one filled (`warm_cache`). First call minus second is the compile.
The LAST line is one JSON object.

    python bench/bench_options.py [--size small] [--frames 16] [--steps 4] [--repeats 3] [--threads N]

Not a test: figures depend on the machine. See bench/README.md ("Speed-up options").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _weights  # noqa: E402
from _cases import SEED, request_t2v, with_steps  # noqa: E402
from _common import machine_info, median, ratio, rounded  # noqa: E402

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "motionserve-bench"
FORMS: dict[str, dict[str, bool]] = {
    "eager": {},
    "fuse_qkv": {"fuse_qkv": True},
    "channels_last": {"channels_last": True},
    "fuse_qkv+channels_last": {"fuse_qkv": True, "channels_last": True},
    "compile": {"torch_compile": True},
}


def manager(weights: Any, options: dict[str, Any]) -> Any:
    from motionserve.inference.models import ModelManager
    from motionserve.inference.speedups import Speedups

    return ModelManager(weights.server_arg, weights.map_path.parent, "cpu", speedups=Speedups(**options))


def call(models: Any, frames: int, steps: int) -> tuple[float, float, Any]:
    """One text-to-video call: wall and CPU seconds, and its frames."""
    import torch

    pipe = models.text_to_video()
    request = with_steps(request_t2v(frames), steps)
    cpu, started = time.process_time(), time.perf_counter()
    out = pipe(**request.call, generator=torch.Generator().manual_seed(SEED), output_type="np")
    return time.perf_counter() - started, time.process_time() - cpu, out.frames[0]


def compile_probe(args: argparse.Namespace) -> int:
    """Child mode: load the compiled form over `--probe-cache`, time the first two calls."""
    weights = _weights.prepare(args.size, args.cache_dir)
    started = time.perf_counter()
    models = manager(weights, {"torch_compile": True, "compile_cache_dir": args.probe_cache})
    models.text_to_video()
    load_s = time.perf_counter() - started
    first, second = call(models, args.frames, args.steps), call(models, args.frames, args.steps)
    print(json.dumps({"load_s": load_s, "first_s": first[0], "second_s": second[0], "compile_s": first[0] - second[0]}))
    return 0


def run_probe(args: argparse.Namespace, cache: Path) -> dict[str, float]:
    command = [sys.executable, os.path.abspath(__file__), "--probe-cache", str(cache), "--size", args.size,
               "--frames", str(args.frames), "--steps", str(args.steps), "--cache-dir", str(args.cache_dir)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "small"], default="small")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="denoising steps (the endpoint's 25 is 6× the work)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--forms", default=",".join(FORMS), help="comma-separated subset of: " + ", ".join(FORMS))
    parser.add_argument("--skip-restart", action="store_true", help="skip the cold/warm-cache compile children")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--probe-cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe_cache:
        return compile_probe(args)
    started = time.perf_counter()
    info = machine_info("cpu")
    weights = _weights.prepare(args.size, args.cache_dir)
    restart: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="motionserve-compile-") as kernels:
        if not args.skip_restart:
            restart = {"cold": run_probe(args, Path(kernels)), "warm_cache": run_probe(args, Path(kernels))}
            print(f"compile after a restart: {restart}", flush=True)
        names = args.forms.split(",")
        forms = {name: manager(weights, {**FORMS[name], "compile_cache_dir": Path(kernels)}) for name in names}
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        frames: dict[str, Any] = {}
        for repeat in range(args.repeats + 1):  # the first round warms up (and compiles) and is dropped
            for name, models in forms.items():
                wall, cpu, out = call(models, args.frames, args.steps)
                frames.setdefault(name, out)
                if repeat:
                    runs[name].append((wall, cpu))
                print(f"{name}: {wall:.2f} s, cpu {cpu:.2f} s", flush=True)
    base_s, base_cpu = median(r[0] for r in runs["eager"]), median(r[1] for r in runs["eager"])
    figures = {
        name: {"s": median(r[0] for r in rs), "cpu_s": median(r[1] for r in rs),
               "speedup": ratio(base_s, median(r[0] for r in rs)),
               "cpu_speedup": ratio(base_cpu, median(r[1] for r in rs)),
               "max_abs_diff": float(np.abs(np.asarray(frames[name]) - np.asarray(frames["eager"])).max())}
        for name, rs in runs.items()
    }
    for name, f in figures.items():
        print(f"{name:>24}: {f['s']:.2f} s  x{f['speedup']:.2f}  cpu x{f['cpu_speedup']:.2f}  diff {f['max_abs_diff']:.1e}",
              flush=True)
    info["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    summary = rounded({"options": figures, "compile_restart": restart, "size": args.size, "frames": args.frames,
                       "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                       "wall_s": time.perf_counter() - started, "machine": info})
    for name, f in figures.items():  # differences are ~1e-7: kept in 3 significant digits, not rounded away
        summary["options"][name]["max_abs_diff"] = float(f"{f['max_abs_diff']:.2e}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
