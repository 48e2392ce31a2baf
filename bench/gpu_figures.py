"""The GPU figures in one command: full-size t2v and svd-lcm, bare fp16 diffusers against motionserve.

    python bench/gpu_figures.py                 # on a machine with a CUDA GPU; ~7 min on an H200 (estimate)
    python bench/gpu_figures.py --compile       # also torch.compile in the options form (minutes per shape)
    python bench/gpu_figures.py --device cpu --size tiny --steps 2 --endpoints t2v --repeats 1 --out /tmp/s.md
                                                # the whole path on a CPU, to check the script itself

Steps: check that CUDA is there (one line and exit 2 if not); record the GPU (torch and nvidia-smi), its
driver and the torch/CUDA/diffusers versions; build the full-size random weights once (bench/_weights.py,
kept under --cache-dir); then for each endpoint run bench_endpoints.py twice, each in a child process with
a time limit (SIGINT, so the benchmark stops its servers, then SIGKILL):

- like for like: the server with its speed-up options off (bench_endpoints' SAME_WORK_AS_BARE), so
  e2e / bare is what the service adds to the same model work;
- with the options: `MOTIONSERVE_CHANNELS_LAST=true`, `MOTIONSERVE_FUSE_QKV=true` (and with --compile
  `MOTIONSERVE_TORCH_COMPILE=true`, its kernels cached under --cache-dir), against that run's own bare
  call: `speed-up` = bare / e2e with the options.

Each run is the endpoint's default request, one warm-up and --repeats timed calls per form, no 16/64-frame
pair and no throughput run. The figures go into a markdown section written between the markers below in
--out (bench/README.md by default; replaced on every run, added at the end if the markers are missing);
the last line printed is one JSON object with everything.

Time (estimated from what the code does, not measured: no GPU has run this yet): building ~4.3 B random
parameters on the GPU and writing ~12 GB of fp16 files, 1-2 min; per run a server start and pipeline
loads (~30 s) plus 3 bare and 3 end-to-end calls of a few seconds each at full size on an H200.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
README = BENCH / "README.md"
START, END = "<!-- gpu-figures:start -->", "<!-- gpu-figures:end -->"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "motionserve-bench"
OPTIONS = {"MOTIONSERVE_CHANNELS_LAST": "true", "MOTIONSERVE_FUSE_QKV": "true"}
INTERRUPT_GRACE_S = 60  # after SIGINT, time for the benchmark to stop its servers before SIGKILL


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--endpoints", default="t2v,svd-lcm", help="comma-separated bench_endpoints keys")
    parser.add_argument("--device", default="cuda", help="cuda[:N]; cpu only to check this script (with --out)")
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="full")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per form after one warm-up")
    parser.add_argument("--steps", type=int, help="override the step count (script checks only, not figures)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile in the options form")
    parser.add_argument("--timeout", type=float, help="seconds per benchmark run (default 420, 1500 with --compile)")
    parser.add_argument("--build-timeout", type=float, default=900, help="seconds for building the weights")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="built weights and compiled kernels")
    parser.add_argument("--out", type=Path, default=README, help="the markdown file whose section is replaced")
    args = parser.parse_args(argv)
    args.endpoints = [k.strip() for k in args.endpoints.split(",") if k.strip()]
    if args.timeout is None:
        args.timeout = 1500.0 if args.compile else 420.0
    if not args.device.startswith("cuda") and args.out.resolve() == README:
        parser.error("the README's section holds GPU figures: give --out for a run on another device")
    return args


def gpu_facts(device: str) -> dict[str, Any]:
    """The GPU and the software stack, or an error line when CUDA is not usable."""
    import diffusers
    import torch

    facts: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                             "diffusers": diffusers.__version__, "python": sys.version.split()[0]}
    if not device.startswith("cuda"):
        return facts
    if not torch.cuda.is_available():
        print(f"no CUDA GPU here (torch {torch.__version__}, built for CUDA {torch.version.cuda}): nothing measured",
              file=sys.stderr)
        raise SystemExit(2)
    index = torch.device(device).index or 0
    facts["gpu"] = torch.cuda.get_device_name(index)
    facts["gpu_memory_gib"] = round(torch.cuda.get_device_properties(index).total_memory / 2**30, 1)
    try:
        smi = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True)
        name, _, driver = smi.stdout.strip().partition(", ")
        facts["nvidia_smi_name"], facts["driver"] = name, driver
    except (OSError, subprocess.SubprocessError) as exc:
        facts["driver"] = f"unknown ({exc.__class__.__name__})"
    return facts


def build_weights(args: argparse.Namespace) -> float:
    """Build (or find) the weights in a child process, so this one holds no GPU memory; its seconds."""
    code = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); import _weights; "
            "_weights.prepare(sys.argv[2], Path(sys.argv[3]), build_device=sys.argv[4])")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(BENCH), args.size, str(args.cache_dir), args.device],
                   check=True, timeout=args.build_timeout)
    return time.perf_counter() - started


def bench_command(args: argparse.Namespace, endpoint: str, server_env: dict[str, str]) -> list[str]:
    command = [sys.executable, str(BENCH / "bench_endpoints.py"), "--endpoint", endpoint, "--size", args.size,
               "--device", args.device, "--repeats", str(args.repeats), "--skip-64", "--throughput", "0",
               "--options", "none", "--cold-start-repeats", "0", "--cache-dir", str(args.cache_dir)]
    if args.steps:
        command += ["--steps", str(args.steps)]
    if not args.device.startswith("cuda"):
        command += ["--threads", "1"]  # a check on a CPU: steady and light
    for key, value in server_env.items():
        command += ["--server-env", f"{key}={value}"]
    return command


def run_bench(command: list[str], timeout_s: float) -> tuple[dict[str, Any] | None, str | None]:
    """Run one benchmark, its output passed through; (its last-line JSON, an error or None)."""
    print(f"$ {shlex.join(command)}", flush=True)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    limit = _Deadline(proc, timeout_s)
    last = ""
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            if line.strip():
                last = line
    finally:
        proc.wait()
        limit.cancel()
    try:
        figures = json.loads(last)
    except ValueError:
        figures = None
    if limit.fired:
        return figures, f"stopped after the {timeout_s:.0f} s limit"
    if figures is None:
        return None, f"exited with {proc.returncode} and no JSON line"
    return figures, None


class _Deadline:
    """After `timeout_s`, SIGINT (the benchmark's finally blocks stop its servers), then SIGKILL."""

    def __init__(self, proc: subprocess.Popen, timeout_s: float) -> None:
        self.proc, self.fired = proc, False
        self._timers = [threading.Timer(timeout_s, self._signal, (signal.SIGINT,)),
                        threading.Timer(timeout_s + INTERRUPT_GRACE_S, self._signal, (signal.SIGKILL,))]
        for timer in self._timers:
            timer.start()

    def _signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.fired = True
            self.proc.send_signal(sig)

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()


def row(endpoint: str, same: dict[str, Any] | None, options: dict[str, Any] | None) -> dict[str, Any]:
    """One table row from the two runs' figures for `endpoint`."""
    a = (same or {}).get(endpoint, {})
    b = (options or {}).get(endpoint, {})
    return {
        "endpoint": endpoint,
        "frames": a.get("frames", b.get("frames")),
        "bare_s": a.get("bare_s"),
        "e2e_s": a.get("e2e_s"),
        "ratio": a.get("ratio"),
        "options_bare_s": b.get("bare_s"),
        "options_e2e_s": b.get("e2e_s"),
        "options_ratio": b.get("ratio"),
        "speedup": _div(b.get("bare_s"), b.get("e2e_s")),  # bare / e2e with the options, same run
        "peak_gpu_mb": a.get("peak_gpu_mb"),
        "options_peak_gpu_mb": b.get("peak_gpu_mb"),
        "bare_peak_gpu_mb": a.get("bare_peak_gpu_mb"),
        "peak_rss_mb": a.get("peak_rss_mb"),
        "errors": [f"{form}: {e}" for form, e in (("like for like", a.get("error")), ("with options", b.get("error")))
                   if e],
    }


def _div(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _f(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "–" if value is None else str(value)


def section(summary: dict[str, Any]) -> str:
    """The markdown between the markers."""
    facts, rows = summary["machine"], summary["rows"]
    on_gpu = "gpu" in facts
    title = (f"GPU figures: {facts['gpu']} ({facts['gpu_memory_gib']} GiB), driver {facts.get('driver', '?')}"
             if on_gpu else f"Not GPU figures: a check of the script on `{facts['device']}`")
    memory = "peak GPU MB: e2e / e2e with options / bare" if on_gpu else "peak RSS MB (model process)"
    lines = [
        f"### {title}",
        "",
        f"{summary['date']}; torch {facts['torch']} (CUDA {facts['cuda']}), diffusers {facts['diffusers']}, "
        f"Python {facts['python']}; `{summary['size']}` weights (built or found in {_f(summary['weights_s'], 0)} s); "
        f"{summary['repeats']} timed call(s) per form after a warm-up; steps {summary['steps']}; "
        f"total {_f(summary['wall_s'] / 60, 1)} min.",
        "",
        f"`{summary['command']}`",
        "",
        f"| endpoint | frames | bare s | e2e s | ratio | e2e with options s | speed-up | {memory} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = (f"{_f(r['peak_gpu_mb'], 0)} / {_f(r['options_peak_gpu_mb'], 0)} / {_f(r['bare_peak_gpu_mb'], 0)}"
                if on_gpu else _f(r["peak_rss_mb"], 0))
        lines.append(f"| {r['endpoint']} | {_f(r['frames'])} | {_f(r['bare_s'])} | {_f(r['e2e_s'])} | "
                     f"**{_f(r['ratio'])}** | {_f(r['options_e2e_s'])} | **{_f(r['speedup'])}** | {peak} |")
    options = ", ".join(f"`{k}={v}`" for k, v in summary["options_env"].items())
    lines += [
        "",
        f"bare: plain diffusers ({'fp16' if on_gpu else 'fp32'}), seconds per default request (median); "
        "e2e: the same request through "
        "the queue (submit, poll, result, MP4 download) on a server with its speed-up options off; "
        f"ratio = e2e / bare. e2e with options: a second run with {options}; speed-up = that run's bare / "
        "its e2e (above 1: motionserve with the options is faster than bare diffusers). GPU memory: "
        "nvidia-smi's view of the model process (context and PyTorch's pool) for e2e, "
        "`torch.cuda.max_memory_allocated` (tensors only) for bare.",
    ]
    for r in rows:
        for error in r["errors"]:
            lines.append(f"\n**{r['endpoint']} failed:** `{error.splitlines()[0][:300]}`")
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace what lies between the markers in `path` (append the markers if they are missing)."""
    current = path.read_text() if path.exists() else ""
    block = f"{START}\n{text}\n{END}"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if pattern.search(current):
        updated = pattern.sub(lambda _: block, current, count=1)
    else:
        updated = current.rstrip("\n") + ("\n\n" if current else "") + block + "\n"
    path.write_text(updated)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    facts = gpu_facts(args.device)
    print(f"device: {facts.get('gpu', args.device)}; torch {facts['torch']}, diffusers {facts['diffusers']}",
          flush=True)
    weights_s = build_weights(args)
    print(f"weights: {args.size} ready in {weights_s:.0f} s", flush=True)
    options_env = dict(OPTIONS)
    if args.compile:
        options_env["MOTIONSERVE_TORCH_COMPILE"] = "true"
        options_env["MOTIONSERVE_COMPILE_CACHE_DIR"] = str(args.cache_dir / "compile-cache")
    runs: dict[str, dict[str, Any]] = {}
    rows = []
    for endpoint in args.endpoints:
        results = {}
        for form, env in (("same_work", {}), ("options", options_env)):
            figures, error = run_bench(bench_command(args, endpoint, env), args.timeout)
            if error:
                print(f"[{endpoint}] {form}: {error}", flush=True)
                figures = {**(figures or {}), endpoint: {**(figures or {}).get(endpoint, {}), "error": error}}
            results[form] = figures
        runs[endpoint] = results
        rows.append(row(endpoint, results["same_work"], results["options"]))
    summary = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "bench/gpu_figures.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": facts, "size": args.size, "repeats": args.repeats, "steps": args.steps or "default",
        "options_env": options_env, "weights_s": weights_s, "wall_s": time.perf_counter() - started,
        "rows": rows, "runs": runs,
    }
    write_section(args.out, section(summary))
    print(f"section written to {args.out}", flush=True)
    print(json.dumps(summary))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
