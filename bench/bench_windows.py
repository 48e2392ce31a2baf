"""Context windows in one process: 64 frames with the windows batched against diffusers' loop over them.

One text-to-video pipeline (the bench's weights, the endpoint's request at 512×512), called in turn with:
16 frames (no windows: the baseline), and 64 frames for each `--overlaps` value (window length 16) three
ways: `batched` (the project's `BatchedWindowsBlock`, all windows of a block in one call), `one_per_call`
(the same block with `windows_per_call=1`) and `looped` (diffusers' `FreeNoiseTransformerBlock` over the
very same modules). The forms alternate `--repeats` times, so drift
in the machine's load hits all alike; medians of wall and CPU seconds and their ratios to 16 frames
(4.0 is linear). Run under the glibc malloc settings the server gives its CPU model process, like
bench_endpoints.py's bare side; with those, freed memory stays with the process, so per-form peak memory
is not measured here (bench_endpoints.py reports the model process's peaks at 16 and 64 frames).
The LAST line is one JSON object.

    python bench/bench_windows.py [--size small] [--overlaps 4,12] [--steps 25] [--repeats 2] [--threads 1]

Not a test: figures depend on the machine. See bench/README.md ("16 → 64 frames").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _weights  # noqa: E402
from _cases import SEED, load_t2v, request_t2v, with_steps  # noqa: E402
from _common import machine_info, median, ratio, rounded  # noqa: E402

LENGTH = 16
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "motionserve-bench"


def forms(pipe: Any, overlaps: list[int]) -> dict[str, Callable[[], None]]:
    """Name -> how to put the pipeline's UNet in that form (16 frames: no windows)."""
    from diffusers import AnimateDiffPipeline

    from motionserve.inference.context_windows import set_windows_per_call

    looped = AnimateDiffPipeline(**pipe.components)  # diffusers' own FreeNoise blocks, same modules

    def windows(owner: Any, overlap: int, per_call: int | None = None) -> Callable[[], None]:
        def enable() -> None:
            pipe.disable_free_noise()  # from either form back to plain blocks, then into this one
            owner.enable_free_noise(context_length=LENGTH, context_stride=LENGTH - overlap)
            set_windows_per_call(pipe.unet, per_call)
        return enable

    table: dict[str, Callable[[], None]] = {"16": pipe.disable_free_noise}
    for overlap in overlaps:
        table[f"64_batched_o{overlap}"] = windows(pipe, overlap)
        table[f"64_one_per_call_o{overlap}"] = windows(pipe, overlap, per_call=1)
        table[f"64_looped_o{overlap}"] = windows(looped, overlap)
    return table


def call(pipe: Any, frames: int, steps: int | None) -> tuple[float, float]:
    """One call: wall and CPU seconds."""
    import torch

    request = with_steps(request_t2v(frames), steps)
    cpu, started = time.process_time(), time.perf_counter()
    pipe(**request.call, generator=torch.Generator().manual_seed(SEED), output_type="np")
    return time.perf_counter() - started, time.process_time() - cpu


def same_allocator_as_model_process() -> None:
    """Re-run this script under the server's CPU malloc settings (glibc reads them only at start-up)."""
    from motionserve.jobs.child import CPU_MALLOC_ENV

    if all(os.environ.get(name) is not None for name in CPU_MALLOC_ENV):
        return
    for name, value in CPU_MALLOC_ENV.items():
        os.environ.setdefault(name, value)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "small"], default="small")
    parser.add_argument("--overlaps", default="4,12", help="window overlaps to compare (window length 16)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the endpoint's 25)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 gives steady figures on a shared machine)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    same_allocator_as_model_process()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    weights = _weights.prepare(args.size, args.cache_dir, build_device="cpu")
    pipe = load_t2v(weights, "cpu", torch.float32)
    table = forms(pipe, [int(o) for o in args.overlaps.split(",")])
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in table}
    started = time.perf_counter()
    for repeat in range(args.repeats + 1):  # the first round (one step each) warms up and is dropped
        for name, enable in table.items():
            enable()
            result = call(pipe, 16 if name == "16" else 64, args.steps if repeat else 1)
            if repeat:
                runs[name].append(result)
                print(f"{name}: {result[0]:.2f} s, cpu {result[1]:.2f} s", flush=True)
    base_s, base_cpu = median(r[0] for r in runs["16"]), median(r[1] for r in runs["16"])
    figures = {
        name: {"s": median(r[0] for r in rs), "cpu_s": median(r[1] for r in rs),
               "ratio_to_16": ratio(median(r[0] for r in rs), base_s),
               "cpu_ratio_to_16": ratio(median(r[1] for r in rs), base_cpu)}
        for name, rs in runs.items()
    }
    for name, f in figures.items():
        print(f"{name:>16}: {f['s']:.2f} s  x{f['ratio_to_16']:.2f}  cpu x{f['cpu_ratio_to_16']:.2f}", flush=True)
    print(json.dumps(rounded({"windows": figures, "size": args.size, "steps": args.steps or 25,
                              "repeats": args.repeats, "threads": args.threads, "wall_s": time.perf_counter() - started,
                              "machine": machine_info("cpu")})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
