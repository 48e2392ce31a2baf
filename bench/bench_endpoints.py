"""Per-endpoint benchmark: a bare diffusers pipeline call against the same request through the HTTP queue.

For each endpoint, in one run, on the same weights and arguments:

(a) bare: the plain diffusers pipeline, loaded from the same checkpoint folders with the same scheduler
    settings, called with the endpoint's arguments (size, frames, steps, guidance, strength, seed);
    load time excluded (one warm-up call first);
(b) end to end: a real `motionserve serve` on those weights; submit to `/queue/{endpoint}` with httpx, poll
    the status every 0.1 s (fal_client's interval) until COMPLETED, GET the result, download the MP4;
    one warm-up request first (the model process loads its pipelines lazily).

(a) and (b) alternate, `--repeats` times each, and medians are compared: `ratio` = e2e / bare (target
<= 1.10). Then throughput: `--throughput N` (default 8) requests submitted at once to the one worker,
timed from the first submit until every MP4 is downloaded, against N bare calls made back to back just
before: `throughput_ratio` = that / (N bare calls), with the target (N bare calls + one MP4 encode) /
(N bare calls), since each encode overlaps the next request's denoising and only the last one's is in the
way; the store's timestamps say where the rest goes (`throughput_start_interval_s` and the others). Peak memory: RSS high-water of the model process for (b) and of this process for (a); on CUDA
also GPU memory. For the AnimateDiff endpoints, 16 against 64 frames (64 uses FreeNoise context
windows): `ratio_64_16` (target <= 4.4; 4.0 is linear). SVD-LCM always makes 25 frames: n/a.

    python bench/bench_endpoints.py --endpoint {t2v,v2v,turbo,svd-lcm,all} [--size tiny|small|full]
                                    [--repeats N] [--throughput N] [--device cpu|cuda] [--previews-on-off]
                                    [--server-env KEY=VALUE ...]

`--previews-on-off` measures live previews instead: the same request on two servers that differ only in
`MOTIONSERVE_PREVIEWS`, alternating, `--repeats` times each: `previews_ratio` = e2e on / off (target
<= 1.03), with the handler's own time and the model process's CPU seconds on / off beside it.

`--server-env MOTIONSERVE_X=value` (repeatable) changes the server's settings on top of SAME_WORK_AS_BARE,
e.g. to measure motionserve with its speed-up options against bare diffusers; `server_env` in the JSON
says what the server ran with.

Human-readable lines first; the LAST line is one JSON object with every figure. Not a test: the numbers
depend on the machine (and on what else runs on it: see `loadavg_1m_*`). See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _weights  # noqa: E402
from _cases import CASES, Case, Request, call_bare, chosen_endpoints, with_steps  # noqa: E402
from _common import (  # noqa: E402
    BenchServer, E2EResult, GpuMemorySampler, QueueClient, cpu_seconds, machine_info, median, peak_rss_mb, ratio,
    reset_peak_rss, rounded,
)

TARGET_RATIO = 1.10
TARGET_RATIO_64_16 = 4.4
TARGET_PREVIEWS_RATIO = 1.03
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "motionserve-bench"

# The bare side is plain diffusers: the server runs without its speed-up options (channels-last is on
# by default) so that e2e / bare measures what the service adds, not a different model layout.
# bench_options.py measures the options themselves.
SAME_WORK_AS_BARE = {"MOTIONSERVE_CHANNELS_LAST": "false", "MOTIONSERVE_FUSE_QKV": "false", "MOTIONSERVE_TORCH_COMPILE": "false"}
# `--options`: each speed-up option's setting, measured e2e against the server without options.
OPTION_SETTINGS = {"channels_last": "MOTIONSERVE_CHANNELS_LAST", "fuse_qkv": "MOTIONSERVE_FUSE_QKV",
                   "compile": "MOTIONSERVE_TORCH_COMPILE"}


def server_settings(args: argparse.Namespace) -> dict[str, str]:
    """What every server of this run is started with: SAME_WORK_AS_BARE, then `--server-env` over it."""
    return {**SAME_WORK_AS_BARE, **args.server_env}


@dataclass
class Run:
    seconds: float
    cpu: float
    rss_mb: float | None
    gpu_mb: float | None
    frames: Any = None  # bare: the pipeline's frames
    result: E2EResult | None = None  # e2e: what the service returned
    model_cpu: float | None = None  # e2e: CPU seconds of the model process alone


class Bench:
    """The runs for one endpoint: its server, its bare pipeline, and the requests timed on both."""

    def __init__(self, case: Case, args: argparse.Namespace, weights: _weights.Weights, workdir: Path) -> None:
        import torch

        self.case, self.args, self.device, self.weights = case, args, args.device, weights
        self.cuda = args.device.startswith("cuda")
        self.dtype = torch.float16 if self.cuda else torch.float32  # what the server's ModelManager uses
        self.server = BenchServer.start(workdir / case.key, weights=weights.server_arg, device=args.device,
                                        log_dir=workdir, name=f"server-{case.key}", env=server_settings(args))
        try:
            self.client = QueueClient(self.server.base_url, self.server.create_key(), poll_s=args.poll_interval)
            self.pipe = case.load(weights, args.device, self.dtype)
        except BaseException:  # an interrupt too (gpu_figures.py's time limit): never leave a server behind
            self.server.stop()
            raise
        self._uploaded: dict[int, str] = {}
        self._store: Any = None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        self.client.close()
        self.server.stop()
        del self.pipe
        gc.collect()
        if self.cuda:
            import torch

            torch.cuda.empty_cache()

    # -- one request, both ways ---------------------------------------------------------------------

    def payload(self, request: Request) -> dict[str, Any]:
        return payload_on(self.client, request, self._uploaded)

    def bare_once(self, request: Request) -> Run:
        """One bare call: wall and CPU seconds, peak memory (MiB), frames."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        reset_peak_rss(os.getpid())
        cpu, started = time.process_time(), time.perf_counter()
        frames = call_bare(self.pipe, request, self.device)
        if self.cuda:
            torch.cuda.synchronize()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        gpu = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else None
        return Run(elapsed, cpu, peak_rss_mb(os.getpid()), gpu, frames=frames)

    def e2e_once(self, request: Request) -> Run:
        """One queue round trip: wall seconds, CPU seconds of every process involved, the model process's peaks."""
        pid = self.server.model_pid()
        processes = [p for p in (pid, self.server.process.pid, os.getpid()) if p is not None]
        payload = self.payload(request)
        if pid is not None:
            reset_peak_rss(pid)
        before = [cpu_seconds([p]) for p in processes]
        with GpuMemorySampler(pid if self.cuda else None) as sampler:
            result = self.client.run(self.case.endpoint_id, payload)
        used = [cpu_seconds([p]) - b for p, b in zip(processes, before)]
        model_cpu = used[0] if pid is not None else None
        return Run(result.seconds, sum(used), peak_rss_mb(pid) if pid is not None else None, sampler.peak_mb,
                   result=result, model_cpu=model_cpu)

    def measure(self, request: Request, repeats: int, warm_up: bool) -> dict[str, Any]:
        if warm_up:
            self.bare_once(request)
            self.e2e_once(request)
        bare_runs: list[Run] = []
        e2e_runs: list[Run] = []
        for _ in range(repeats):  # alternate, so drift in the machine's load hits both alike
            bare_runs.append(self.bare_once(request))
            e2e_runs.append(self.e2e_once(request))
        results = [r.result for r in e2e_runs if r.result is not None]
        bare, e2e = [r.seconds for r in bare_runs], [r.seconds for r in e2e_runs]
        handler = [r.inference_time for r in results]
        stages: dict[str, list[float]] = {}
        for r in results:
            for stage, value in (r.output.get("timings") or {}).items():
                stages.setdefault(stage, []).append(value)
        figures = {
            "frames": request.frames,
            "bare_s": median(bare),
            "e2e_s": median(e2e),
            "ratio": ratio(median(e2e), median(bare)),
            # CPU seconds (all threads; for e2e the model, server and client processes together) are less
            # disturbed than wall time by other work on a shared machine.
            "bare_cpu_s": median(r.cpu for r in bare_runs),
            "e2e_cpu_s": median(r.cpu for r in e2e_runs),
            "cpu_ratio": ratio(median(r.cpu for r in e2e_runs), median(r.cpu for r in bare_runs)),
            "e2e_model_cpu_s": median(r.model_cpu for r in e2e_runs),
            # The model process's CPU against the bare call's: the service's own work on the model's side,
            # free of how a loaded machine shares its CPUs between the two forms.
            "model_cpu_ratio": ratio(median(r.model_cpu for r in e2e_runs), median(r.cpu for r in bare_runs)),
            "e2e_service_cpu_s": median(_minus(r.cpu, r.model_cpu) for r in e2e_runs),  # server + client
            # Where e2e - bare goes: the handler's own extra work (fetch, decode, prompt weighting, MP4
            # encode, store) and the service around it (queue claim, polling, result and download).
            "handler_s": median(handler),
            "handler_extra_s": _minus(median(handler), median(bare)),
            "service_s": median([_minus(s, h) for s, h in zip(e2e, handler)]),
            "queue_wait_s": median(self.queue_wait(r.request_id) for r in results),
            "mp4_encode_s": self.encode_seconds(bare_runs[-1].frames if bare_runs else None),
            "e2e_frames": _mp4_frames(results[-1].video) if results else None,
            "bare_runs_s": bare,
            "e2e_runs_s": e2e,
        }
        # Peaks: RSS high-water of the model process (e2e) and of this process (bare); on CUDA also GPU
        # memory: nvidia-smi's view of the model process (context + PyTorch's reserved pool) and
        # `max_memory_allocated` here (tensors only), so the two GPU figures are not like for like.
        figures["peak_rss_mb"] = _max(r.rss_mb for r in e2e_runs)
        figures["bare_peak_rss_mb"] = _max(r.rss_mb for r in bare_runs)
        if self.cuda:
            figures["peak_gpu_mb"] = _max(r.gpu_mb for r in e2e_runs)
            figures["bare_peak_gpu_mb"] = _max(r.gpu_mb for r in bare_runs)
        if stages:
            figures["handler_stages_s"] = {k: median(v) for k, v in stages.items()}
        return figures

    def throughput(self, request: Request, count: int, bare_s: float, encode_s: float | None) -> dict[str, Any]:
        """`count` requests submitted at once, back to back on the one worker: from the first submit until
        the last MP4 is downloaded, against `count` bare calls made back to back just before (the same
        stretch of the machine's load, rather than `count` × one call's median)."""
        payload = self.payload(request)
        started = time.perf_counter()
        for _ in range(count):
            call_bare(self.pipe, request, self.device)  # returns numpy frames: the device has finished
        bare_all_s = time.perf_counter() - started
        started = time.perf_counter()
        submitted = [self.client.submit(self.case.endpoint_id, payload) for _ in range(count)]
        results = [self.client.wait(self.case.endpoint_id, s) for s in submitted]
        seconds = time.perf_counter() - started
        assert all(_mp4_frames(r.video) == request.frames for r in results[-1:]), "the last MP4 has the wrong frames"
        figures = {"throughput_requests": count, "throughput_s": seconds, "throughput_bare_s": bare_all_s,
                   "throughput_ratio": ratio(seconds, bare_all_s),
                   "throughput_ratio_median_bare": ratio(seconds, count * bare_s)}
        if encode_s is not None:
            figures["throughput_target"] = ratio(bare_all_s + encode_s, bare_all_s)
        figures.update(self.back_to_back_breakdown([s["request_id"] for s in submitted], bare_all_s / count))
        return figures

    def back_to_back_breakdown(self, request_ids: list[str], bare_s: float) -> dict[str, Any]:
        """Where the back-to-back time goes, from the server's clock: the first request's wait for a start;
        from one start to the next (its excess over a bare call), split into the handler up to its hand-off
        of the frames (its log line `OUTPUT_PENDING_LOG`: fetch, decode, denoise) and the hand-over to the
        next job (claim, dispatch); and the last request from its start to its completion (with its encode)."""
        from motionserve.jobs.runner import OUTPUT_PENDING_LOG

        jobs = sorted((self.job(request_id) for request_id in request_ids),
                      key=lambda j: float("inf") if j is None or j.started_at is None else float(j.started_at))
        if any(j is None or j.started_at is None for j in jobs):
            return {}
        starts = [float(j.started_at) for j in jobs]
        handed = [self.log_time(j.id, OUTPUT_PENDING_LOG) for j in jobs]
        intervals = [b - a for a, b in zip(starts, starts[1:])]
        last = jobs[-1]
        return {
            "throughput_first_wait_s": starts[0] - min(float(j.created_at) for j in jobs),
            "throughput_start_interval_s": median(intervals),
            "throughput_interval_excess_s": _minus(median(intervals), bare_s),
            "throughput_handler_s": median(_minus(h, s) for s, h in zip(starts, handed)),
            "throughput_handover_s": median(_minus(s, h) for h, s in zip(handed, starts[1:])),
            "throughput_intervals_s": intervals,
            "throughput_last_run_s": _minus(float(last.finished_at) if last.finished_at else None, starts[-1]),
        }

    def log_time(self, request_id: str, prefix: str) -> float | None:
        """When the request's first log line starting with `prefix` was written (server clock)."""
        lines = self.server_store().logs(request_id)
        return next((float(line.timestamp) for line in lines if line.message.startswith(prefix)), None)

    def option_speedups(self, request: Request, options: list[str], repeats: int, workdir: Path) -> dict[str, Any]:
        """Per speed-up option, a second server with only that option on: a warm-up request each, then
        `repeats` requests to it and to this bench's server (options off) in turn. `speedup` = e2e
        seconds without / with the option (above 1: faster); the model process's CPU seconds likewise."""
        figures: dict[str, Any] = {}
        for option in options:
            env = {**server_settings(self.args), OPTION_SETTINGS[option]: "true"}
            server = BenchServer.start(workdir / f"{self.case.key}-{option}", weights=self.weights.server_arg,
                                       device=self.device, log_dir=workdir, name=f"server-{self.case.key}-{option}", env=env)
            client = QueueClient(server.base_url, server.create_key(), poll_s=self.args.poll_interval)
            try:
                with_option = _TimedServer(server, client, self.case, payload_on(client, request, {}))
                without = _TimedServer(self.server, self.client, self.case, self.payload(request), warm=True)
                with_option.run()  # loads (and with compile, compiles for) this request's shape
                for _ in range(repeats):
                    without.run()
                    with_option.run()
            finally:
                client.close()
                server.stop()
            figures[option] = {
                "e2e_s": median(with_option.seconds), "e2e_without_s": median(without.seconds),
                "speedup": ratio(median(without.seconds), median(with_option.seconds)),
                "model_cpu_speedup": ratio(median(without.model_cpu), median(with_option.model_cpu)),
                "first_request_s": with_option.first_s,
            }
            print(f"[{self.case.key}] option {option}: e2e {_fmt(figures[option]['e2e_s'])} s against "
                  f"{_fmt(figures[option]['e2e_without_s'])} s without: speed-up {_fmt(figures[option]['speedup'])} "
                  f"(model CPU {_fmt(figures[option]['model_cpu_speedup'])})", flush=True)
        return figures

    def server_store(self) -> Any:
        """The server's own store (its database, read directly)."""
        from motionserve.config import Settings
        from motionserve.jobs.store import Store

        if self._store is None:
            self._store = Store(Settings(data_dir=self.server.data_dir).resolved_database_url)
        return self._store

    def job(self, request_id: str) -> Any:
        """The request's row in the server's store (its clock: submit, start, finish)."""
        return self.server_store().get(request_id)

    def queue_wait(self, request_id: str) -> float | None:
        """Submit to start, from the store: the worker's claim loop and the hand-over to the model process."""
        job = self.job(request_id)
        if job is None or job.started_at is None:
            return None
        return float(job.started_at) - float(job.created_at)

    @staticmethod
    def encode_seconds(frames: Any) -> float | None:
        """The MP4 encode the handler does, timed here on the bare call's frames."""
        from motionserve.inference.video_io import encode_mp4

        if frames is None:
            return None
        started = time.perf_counter()
        encode_mp4(list(frames), fps=8)
        return time.perf_counter() - started


def payload_on(client: QueueClient, request: Request, uploaded: dict[int, str]) -> dict[str, Any]:
    """The request's payload for the server behind `client`, its media uploaded there once (`uploaded`
    remembers them; a server fetches only its own files, other loopback addresses being refused)."""
    payload = dict(request.payload)
    for name, (data, content_type, file_name) in request.media.items():
        if id(data) not in uploaded:
            uploaded[id(data)] = client.upload(data, content_type=content_type, file_name=file_name)
        payload[name] = uploaded[id(data)]
    return payload


class _TimedServer:
    """Requests to one server, timed end to end, with its model process's CPU seconds for each."""

    def __init__(self, server: BenchServer, client: QueueClient, case: Case, payload: dict[str, Any],
                 warm: bool = False) -> None:
        """`warm`: its pipelines are loaded already; else its first request is the warm-up, kept apart."""
        self.server, self.client, self.case, self.payload = server, client, case, payload
        self.seconds: list[float] = []
        self.model_cpu: list[float | None] = []
        self.first_s: float | None = None
        self.warm = warm

    def run(self) -> None:
        pid = self.server.model_pid()
        before = cpu_seconds([pid]) if pid is not None else None
        seconds = self.client.run(self.case.endpoint_id, self.payload).seconds
        if not self.warm:
            self.first_s, self.warm = seconds, True
            return
        self.seconds.append(seconds)
        self.model_cpu.append(cpu_seconds([pid]) - before if pid is not None and before is not None else None)


def _max(values: Any) -> float | None:
    return max((v for v in values if v is not None), default=None)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _mp4_frames(data: bytes) -> int:
    import av

    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def bench_endpoint(case: Case, args: argparse.Namespace, weights: _weights.Weights, workdir: Path) -> dict[str, Any]:
    bench = Bench(case, args, weights, workdir)
    try:
        default = with_steps(case.request(None), args.steps)
        figures = bench.measure(default, args.repeats, warm_up=True)
        _print_line(case.key, "default", figures)
        if args.throughput:
            figures.update(bench.throughput(default, args.throughput, figures["bare_s"], figures["mp4_encode_s"]))
            print(f"[{case.key}] {args.throughput} back to back: {_fmt(figures['throughput_s'])} s, "
                  f"throughput_ratio {_fmt(figures['throughput_ratio'])} "
                  f"(target <= {_fmt(figures.get('throughput_target'))}); first start after "
                  f"{_fmt(figures.get('throughput_first_wait_s'))} s, start to start {_fmt(figures.get('throughput_start_interval_s'))} s "
                  f"(bare + {_fmt(figures.get('throughput_interval_excess_s'))} s: handler to its hand-off "
                  f"{_fmt(figures.get('throughput_handler_s'))} s, hand-over {_fmt(figures.get('throughput_handover_s'))} s), "
                  f"last request start to stored "
                  f"{_fmt(figures.get('throughput_last_run_s'))} s", flush=True)
        if not case.long_clips:
            figures.update({k: "n/a" for k in ("t16_s", "t64_s", "ratio_64_16", "e2e_t16_s", "e2e_t64_s",
                                                "e2e_ratio_64_16")})
        elif not args.skip_64:
            figures.update(frames_64_against_16(bench, default, figures))
        if args.options:
            figures["option_speedups"] = bench.option_speedups(default, args.options, args.repeats, workdir)
    except Exception as exc:
        raise RuntimeError(f"{exc!r}\n--- server log (tail) ---\n{bench.server.process.log()[-4000:]}") from exc
    finally:
        bench.close()
    if args.cold_start_repeats:
        figures["cold_start_s"] = cold_start(case, args, weights, workdir / "cold-start")
    return figures


def frames_64_against_16(bench: Bench, default: Request, figures: dict[str, Any]) -> dict[str, Any]:
    """16 against 64 frames (64 with context windows), both forms: `ratio_64_16` and the peaks at each."""
    case, args = bench.case, bench.args
    short = figures if default.frames == 16 else bench.measure(
        with_steps(case.request(16), args.steps), args.repeats_64, warm_up=False)
    long = bench.measure(with_steps(case.request(64), args.steps), args.repeats_64, warm_up=False)
    if short is not figures:
        _print_line(case.key, "16 frames", short)
    _print_line(case.key, "64 frames", long)
    pair = {
        "t16_s": short["bare_s"], "t64_s": long["bare_s"], "ratio_64_16": ratio(long["bare_s"], short["bare_s"]),
        "e2e_t16_s": short["e2e_s"], "e2e_t64_s": long["e2e_s"],
        "e2e_ratio_64_16": ratio(long["e2e_s"], short["e2e_s"]),
        # CPU seconds (bare: this process; e2e: the model process) are less disturbed than wall time
        # by other work on a shared machine.
        "cpu_ratio_64_16": ratio(long["bare_cpu_s"], short["bare_cpu_s"]),
        "e2e_cpu_ratio_64_16": ratio(long["e2e_model_cpu_s"], short["e2e_model_cpu_s"]),
        "frames_64": long["frames"], "e2e_frames_64": long["e2e_frames"],
    }
    for memory in ("peak_rss_mb", "bare_peak_rss_mb", "peak_gpu_mb", "bare_peak_gpu_mb"):
        if memory in long:
            pair[f"{memory}_16"], pair[f"{memory}_64"] = short[memory], long[memory]
    print(f"[{case.key}] 64/16 frames: bare {_fmt(pair['ratio_64_16'])}x, "
          f"e2e {_fmt(pair['e2e_ratio_64_16'])}x (target <= {TARGET_RATIO_64_16}, linear = 4.0); CPU seconds: "
          f"bare {_fmt(pair['cpu_ratio_64_16'])}x, model process {_fmt(pair['e2e_cpu_ratio_64_16'])}x", flush=True)
    return pair


def cold_start(case: Case, args: argparse.Namespace, weights: _weights.Weights, workdir: Path) -> dict[str, Any]:
    """bench_cold_start.py's figures for this endpoint, after this endpoint's servers have stopped: a
    fresh `motionserve worker` with and without preload, seconds to ready and to the first request done."""
    import bench_cold_start

    workdir.mkdir(parents=True, exist_ok=True)
    cold_args = argparse.Namespace(**{**vars(args), "repeats": args.cold_start_repeats})
    figures = bench_cold_start.bench_endpoint(case, cold_args, weights, workdir)["cold_start_s"]
    for mode, f in figures.items():
        print(f"[{case.key}] cold start, {mode}: ready {_fmt(f['ready_s'])} s, first request done "
              f"{_fmt(f['first_done_s'])} s", flush=True)
    return dict(figures)


def bench_previews(case: Case, args: argparse.Namespace, weights: _weights.Weights, workdir: Path) -> dict[str, Any]:
    """Previews on against off: two servers, the same request alternately on each (the order flips every
    repeat, so drift in the machine's load hits both alike). No bare pipeline."""
    request = with_steps(case.request(None), args.steps)
    forms: dict[str, _PreviewForm] = {}
    try:
        for label, on in (("on", "true"), ("off", "false")):
            forms[label] = _PreviewForm.start(case, args, weights, workdir, label, {"MOTIONSERVE_PREVIEWS": on})
        for form in forms.values():
            form.run(request)  # warm-up: the model process loads its pipelines on first use
            form.runs.clear()
        for i in range(args.repeats):
            for label in (("on", "off") if i % 2 == 0 else ("off", "on")):
                forms[label].run(request)
        on, off = forms["on"], forms["off"]
        figures = {
            "frames": request.frames,
            "previews_on_e2e_s": median(on.seconds()),
            "previews_off_e2e_s": median(off.seconds()),
            "previews_ratio": ratio(median(on.seconds()), median(off.seconds())),
            "previews_handler_ratio": ratio(median(on.handler()), median(off.handler())),
            "previews_model_cpu_ratio": ratio(median(on.model_cpu()), median(off.model_cpu())),
            "previews_on_model_cpu_s": median(on.model_cpu()),
            "previews_off_model_cpu_s": median(off.model_cpu()),
            "previews_per_request": on.previews_stored() / (args.repeats + 1),
            "previews_off_stored": off.previews_stored(),
            "preview_make_ms": _preview_make_ms(case, request),
            "previews_on_runs_s": on.seconds(),
            "previews_off_runs_s": off.seconds(),
        }
    except Exception as exc:
        logs = "\n".join(f"--- server {k} log (tail) ---\n{f.server.process.log()[-3000:]}" for k, f in forms.items())
        raise RuntimeError(f"{exc!r}\n{logs}") from exc
    finally:
        for form in forms.values():
            form.close()
    print(f"[{case.key}] previews: on {_fmt(figures['previews_on_e2e_s'])} s  off {_fmt(figures['previews_off_e2e_s'])} s  "
          f"ratio {_fmt(figures['previews_ratio'])} (target <= {TARGET_PREVIEWS_RATIO})  "
          f"handler ratio {_fmt(figures['previews_handler_ratio'])}  model cpu ratio {_fmt(figures['previews_model_cpu_ratio'])}  "
          f"{_fmt(figures['previews_per_request'])} previews a request, {_fmt(figures['preview_make_ms'])} ms to make one",
          flush=True)
    return figures


@dataclass
class _PreviewForm:
    """One server of the previews comparison and what its requests took."""

    server: BenchServer
    client: QueueClient
    media: dict[str, str]  # payload field -> the uploaded input's URL on this server
    endpoint_id: str
    runs: list[Run]

    @classmethod
    def start(cls, case: Case, args: argparse.Namespace, weights: _weights.Weights, workdir: Path, label: str,
              env: dict[str, str]) -> "_PreviewForm":
        name = f"server-{case.key}-previews-{label}"
        server = BenchServer.start(workdir / name, weights=weights.server_arg, device=args.device, log_dir=workdir,
                                   name=name, env={**server_settings(args), **env})
        try:
            client = QueueClient(server.base_url, server.create_key(), poll_s=args.poll_interval)
            media = {field: client.upload(data, content_type=content_type, file_name=file_name)
                     for field, (data, content_type, file_name) in case.request(None).media.items()}
        except BaseException:  # an interrupt too: never leave a server behind
            server.stop()
            raise
        return cls(server, client, media, case.endpoint_id, [])

    def run(self, request: Request) -> None:
        payload = {**request.payload, **self.media}
        pid = self.server.model_pid()
        before = cpu_seconds([pid]) if pid is not None else None
        result = self.client.run(self.endpoint_id, payload)
        pid = pid or self.server.model_pid()
        model_cpu = cpu_seconds([pid]) - before if pid is not None and before is not None else None
        self.runs.append(Run(result.seconds, 0.0, None, None, result=result, model_cpu=model_cpu))

    def seconds(self) -> list[float]:
        return [r.seconds for r in self.runs]

    def handler(self) -> list[float | None]:
        return [r.result.inference_time if r.result else None for r in self.runs]

    def model_cpu(self) -> list[float | None]:
        return [r.model_cpu for r in self.runs]

    def previews_stored(self) -> int:
        """Preview images this server's model process stored (every request, the warm-up's too)."""
        from sqlalchemy import func, select

        from motionserve.config import Settings
        from motionserve.database import files, make_engine

        engine = make_engine(Settings(data_dir=self.server.data_dir).resolved_database_url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(files).where(files.c.kind == "preview")).scalar_one())
        finally:
            engine.dispose()

    def close(self) -> None:
        self.client.close()
        self.server.stop()


def _preview_make_ms(case: Case, request: Request, repeats: int = 20) -> float:
    """What one preview costs the denoising loop, in this process: projecting and encoding latents of the
    request's shape (the file store's PUT and the event run on the model process's preview thread)."""
    import torch

    from motionserve.inference.previews import make_preview

    height, width = (request.call.get("height") or 512) // 8, (request.call.get("width") or 512) // 8
    svd = case.key == "svd-lcm"
    shape = (1, request.frames, 4, height, width) if svd else (1, 4, request.frames, height, width)
    latents = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    make_preview(latents, layout="bfchw" if svd else "bcfhw")
    started = time.perf_counter()
    for _ in range(repeats):
        make_preview(latents, layout="bfchw" if svd else "bcfhw", sigma=1.0 if svd else None)
    return (time.perf_counter() - started) / repeats * 1000


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _print_line(key: str, label: str, f: dict[str, Any]) -> None:
    kind = "peak_gpu_mb" if "peak_gpu_mb" in f else "peak_rss_mb"
    print(f"[{key}] {label}: {f['frames']} frames  bare {_fmt(f['bare_s'])} s  e2e {_fmt(f['e2e_s'])} s  "
          f"ratio {_fmt(f['ratio'])} (target <= {TARGET_RATIO})  handler {_fmt(f['handler_s'])} s  "
          f"queue wait {_fmt(f['queue_wait_s'])} s  mp4 encode {_fmt(f['mp4_encode_s'])} s  "
          f"cpu ratio {_fmt(f['cpu_ratio'])}  {kind} {_fmt(f[kind])} (bare {_fmt(f['bare_' + kind])})", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--endpoint", default="all", help=f"{', '.join(CASES)}, a comma-separated list, or all")
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="tiny")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per form for the default request")
    parser.add_argument("--repeats-64", type=int, default=1, help="timed runs per form for the 16/64-frame pair")
    parser.add_argument("--skip-64", action="store_true", help="skip the 16 vs 64 frames comparison")
    parser.add_argument("--throughput", type=int, default=8,
                        help="requests sent at once for throughput_ratio (0: skip)")
    parser.add_argument("--options", default="channels_last,fuse_qkv",
                        help=f"speed-up options to measure e2e, each on its own server ({', '.join(OPTION_SETTINGS)}; "
                             "none: skip)")
    parser.add_argument("--cold-start-repeats", type=int, default=1,
                        help="runs per mode (preload, lazy) of bench_cold_start.py's measurement (0: skip)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the server gets the same)")
    parser.add_argument("--steps", type=int, help="override the step count in both forms (quick checks only)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads per process, for both forms (1 gives steady figures on a shared machine)")
    parser.add_argument("--poll-interval", type=float, default=0.1, help="status polling interval (s)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where built weights are kept")
    parser.add_argument("--previews-on-off", action="store_true",
                        help="measure live previews: the request on a server with previews on and one with them off")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="a server setting (MOTIONSERVE_* variable) over the same-work-as-bare ones; repeatable")
    parser.add_argument("--check-full-configs", action="store_true",
                        help="only count the full-size models' parameters on the meta device and exit")
    args = parser.parse_args(argv)
    args.endpoints = chosen_endpoints(parser, args.endpoint)
    args.options = [] if args.options in ("", "none") else args.options.split(",")
    if any(option not in OPTION_SETTINGS for option in args.options):
        parser.error(f"--options takes a comma-separated list of {', '.join(OPTION_SETTINGS)}, or none")
    if args.device == "cuda":
        args.device = "cuda:0"
    pairs = [item.partition("=") for item in args.server_env]
    if any(not key or not sep for key, sep, _ in pairs):
        parser.error("--server-env takes KEY=VALUE, e.g. --server-env MOTIONSERVE_FUSE_QKV=true")
    args.server_env = {key: value for key, _, value in pairs}
    if args.size == "full" and not args.device.startswith("cuda") and not args.check_full_configs:
        parser.error("--size full needs --device cuda: its ~4 billion parameters would take hours per call on a CPU "
                     "(use --check-full-configs to check the full-size configs without a GPU)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check_full_configs:
        report = _weights.check_full_configs()
        for name, row in report.items():
            print(f"{name:>10}: {row['mparams']:8.1f} M parameters (published: {row['expected']} M)")
        ok = all(abs(r["mparams"] - r["expected"]) <= 0.01 * r["expected"] for r in report.values())
        print(json.dumps({"full_configs": report, "ok": ok}))
        return 0 if ok else 1

    if not args.device.startswith("cuda"):
        _same_allocator_as_model_process(argv)
    started = time.perf_counter()
    if args.threads:
        # Before torch starts its thread pools here, and inherited by the server and its model process.
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    machine = machine_info(args.device)
    weights = _weights.prepare_for(args)
    results: dict[str, Any] = {}
    for key in args.endpoints:
        endpoint_started = time.perf_counter()
        try:
            if len(args.endpoints) == 1:
                run_one = bench_previews if args.previews_on_off else bench_endpoint
                with tempfile.TemporaryDirectory(prefix="motionserve-bench-") as tmp:
                    results[key] = run_one(CASES[key], args, weights, Path(tmp))
            else:
                results[key] = _in_fresh_process(key, argv)
        except Exception as exc:  # one endpoint failing still reports the others
            traceback.print_exc()
            print(f"[{key}] FAILED: {exc!r}", flush=True)
            results[key] = {"error": repr(exc)[:2000]}
        results[key]["wall_s"] = time.perf_counter() - endpoint_started
    machine["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    machine["wall_s"] = round(time.perf_counter() - started, 1)
    summary = {**results, "machine": machine, "size": args.size, "repeats": args.repeats, "steps": args.steps or "default",
               "threads": args.threads or "default", "server_env": server_settings(args),
               "targets": {"ratio": TARGET_RATIO, "ratio_64_16": TARGET_RATIO_64_16, "previews_ratio": TARGET_PREVIEWS_RATIO}}
    print(json.dumps(rounded(summary)))
    return 1 if any("error" in r for r in results.values()) else 0


def _same_allocator_as_model_process(argv: list[str] | None) -> None:
    """Re-run this script under the glibc malloc settings the server gives its CPU model process.

    glibc reads them only at start-up, and they change a CPU call's speed severalfold (freed activations
    are kept rather than faulted in again), so the bare side must have them too to be comparable.
    """
    try:
        from motionserve.jobs.child import CPU_MALLOC_ENV
    except ImportError:  # a server without them: nothing to match
        return
    if all(os.environ.get(name) is not None for name in CPU_MALLOC_ENV):
        return
    for name, value in CPU_MALLOC_ENV.items():
        os.environ.setdefault(name, value)  # an operator's own value wins, as in the server
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *(sys.argv[1:] if argv is None else argv)])


def _in_fresh_process(key: str, argv: list[str] | None) -> dict[str, Any]:
    """Benchmark one endpoint in a new process, as each gets a new server: the bare side then starts from
    the same clean state (heap, allocator, thread pools) as the model process it is compared with."""
    own = list(sys.argv[1:] if argv is None else argv)
    kept: list[str] = []
    skip = False
    for arg in own:
        if skip:
            skip = False
        elif arg == "--endpoint":
            skip = True
        elif not arg.startswith("--endpoint="):
            kept.append(arg)
    proc = subprocess.Popen([sys.executable, __file__, *kept, "--endpoint", key], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last = ""
    for line in proc.stdout:
        if last:
            print(last, end="", flush=True)  # everything but the child's JSON line
        last = line
    proc.wait()
    try:
        return dict(json.loads(last)[key])
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"the run for {key} exited with {proc.returncode} and no figures") from exc


if __name__ == "__main__":
    sys.exit(main())
