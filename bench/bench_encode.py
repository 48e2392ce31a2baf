"""x264 presets at equal visual quality: which is the fastest that keeps the former default's SSIM?

For each clip (the endpoints' default output sizes: 512×512 × 16 frames for the AnimateDiff endpoints,
1024×576 × 25 for SVD-LCM; realistic content, not noise) the reference is the former default, preset
medium at CRF 18. For every other preset, the highest CRF (the smallest file) whose SSIM against the raw
frames is at least the reference's (within `--tolerance`) is found, and its encode is timed
(`video_io.encode_mp4` as the endpoints call it, median of `--repeats`). The fastest preset that holds
the reference's SSIM is the pick.

SSIM: luma (Y' of BT.709, limited range, the plane x264 itself is tuned on), 7×7 uniform window, the
usual constants, averaged over pixels and frames, between the frames given to the encoder (converted to
Y' exactly as the encoder sees them) and the decoded MP4. Clips:

- `pan`: a camera pan with a slow zoom over a 1/f-noise landscape (natural images' power spectrum),
  with a bright object moving across it;
- `disc`: bench/_cases.synthetic_frames, a gradient with a moving disc (the source clip of the
  video-to-video benchmarks): flat areas and one sharp edge.

    python bench/bench_encode.py [--repeats 3] [--tolerance 0] [--presets ultrafast,...]

Human-readable lines first; the LAST line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from _cases import synthetic_frames  # noqa: E402
from _common import machine_info  # noqa: E402

from motionserve.inference.video_encode import encode_mp4  # noqa: E402

PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium")
REFERENCE = ("medium", 18)
SIZES = {"animatediff": (512, 512, 16), "svd-lcm": (1024, 576, 25)}
CRF_RANGE = range(10, 29)


def pan_frames(width: int, height: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """A pan with a slow zoom over a 1/f-noise landscape, and a bright object crossing it."""
    rng = np.random.default_rng(seed)
    size = 2 * max(width, height)
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    channels = []
    for _ in range(3):
        spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / radius**1.1
        field = np.real(np.fft.ifft2(spectrum))
        channels.append((field - field.mean()) / (4 * field.std()) + 0.5)
    world = np.clip(np.stack(channels, axis=-1) * [0.9, 1.0, 0.8], 0, 1).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(count):
        t = i / max(count - 1, 1)
        zoom = 1.0 - 0.15 * t
        sx = np.clip((xs * zoom + 0.25 * size * t).astype(int), 0, size - 1)
        sy = np.clip((ys * zoom + 0.1 * size * t).astype(int), 0, size - 1)
        frame = world[sy, sx].copy()
        cx, cy = width * (0.15 + 0.7 * t), height * 0.6
        blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * (0.05 * min(width, height)) ** 2))[..., None]
        frame = frame * (1 - blob) + blob * np.array([1.0, 0.85, 0.3], np.float32)
        frames.append((np.clip(frame, 0, 1) * 255 + 0.5).astype(np.uint8))
    return frames


def luma(frame_rgb: np.ndarray) -> np.ndarray:
    video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_rgb), format="rgb24")
    yuv = video_frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
    return yuv.to_ndarray()[: frame_rgb.shape[0]].astype(np.float64)


def decoded_luma(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        return [f.to_ndarray(format="yuv420p")[: f.height].astype(np.float64) for f in container.decode(video=0)]


def _box_mean(image: np.ndarray, k: int) -> np.ndarray:
    padded = np.pad(np.cumsum(np.cumsum(image, axis=0), axis=1), ((1, 0), (1, 0)))
    sums = padded[k:, k:] - padded[:-k, k:] - padded[k:, :-k] + padded[:-k, :-k]
    return sums / (k * k)


def ssim(a: np.ndarray, b: np.ndarray, k: int = 7) -> float:
    """Mean SSIM of two 8-bit planes (float arrays), uniform k×k window, sample covariances."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    norm = k * k / (k * k - 1)
    mu_a, mu_b = _box_mean(a, k), _box_mean(b, k)
    var_a = (_box_mean(a * a, k) - mu_a**2) * norm
    var_b = (_box_mean(b * b, k) - mu_b**2) * norm
    cov = (_box_mean(a * b, k) - mu_a * mu_b) * norm
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(value.mean())


class Clip:
    def __init__(self, name: str, frames: list[np.ndarray], fps: float = 8.0) -> None:
        self.name, self.frames, self.fps = name, frames, fps
        self.luma = [luma(f) for f in frames]
        self._cache: dict[tuple[str, int], tuple[float, int]] = {}

    def quality(self, preset: str, crf: int) -> tuple[float, int]:
        """(SSIM, bytes) of one encode."""
        if (preset, crf) not in self._cache:
            data = encode_mp4(self.frames, self.fps, preset=preset, crf=crf)
            decoded = decoded_luma(data)
            value = statistics.fmean(ssim(r, d) for r, d in zip(self.luma, decoded, strict=True))
            self._cache[(preset, crf)] = (value, len(data))
        return self._cache[(preset, crf)]

    def seconds(self, preset: str, crf: int, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            encode_mp4(self.frames, self.fps, preset=preset, crf=crf)
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    def matching_crf(self, preset: str, target: float) -> int | None:
        """The highest CRF at which `preset` reaches `target` SSIM (bisection: SSIM falls as CRF rises)."""
        low, high = CRF_RANGE.start, CRF_RANGE.stop - 1
        if self.quality(preset, low)[0] < target:
            return None
        while low < high:
            middle = (low + high + 1) // 2
            if self.quality(preset, middle)[0] >= target:
                low = middle
            else:
                high = middle - 1
        return low


def measure(clip: Clip, presets: list[str], repeats: int, tolerance: float) -> dict[str, Any]:
    ref_ssim, ref_bytes = clip.quality(*REFERENCE)
    target = ref_ssim - tolerance
    rows: dict[str, Any] = {}
    for preset in presets:
        crf = clip.matching_crf(preset, target)
        if crf is None:
            rows[preset] = {"crf": None}
            continue
        value, size = clip.quality(preset, crf)
        rows[preset] = {"crf": crf, "ssim": round(value, 5), "kbytes": round(size / 1024, 1),
                        "encode_s": round(clip.seconds(preset, crf, repeats), 4)}
    reference_s = clip.seconds(*REFERENCE, repeats)
    for row in rows.values():
        if row.get("encode_s"):
            row["speedup_vs_reference"] = round(reference_s / row["encode_s"], 2)
    timed = {p: r for p, r in rows.items() if r.get("encode_s")}
    fastest = min(timed, key=lambda p: timed[p]["encode_s"])
    return {"reference": {"preset": REFERENCE[0], "crf": REFERENCE[1], "ssim": round(ref_ssim, 5),
                          "kbytes": round(ref_bytes / 1024, 1), "encode_s": round(reference_s, 4)},
            "presets": rows, "fastest": {"preset": fastest, "crf": timed[fastest]["crf"]}}


def choose(clips: dict[str, Clip], results: dict[str, Any], presets: list[str], repeats: int) -> dict[str, Any]:
    """Each preset at the one CRF that holds the reference on every clip, timed on all of them."""
    totals: dict[str, Any] = {}
    for preset in presets:
        crfs = [results[key]["presets"][preset]["crf"] for key in clips]
        if None in crfs:
            continue
        crf = min(crfs)
        seconds = {key: round(clip.seconds(preset, crf, repeats), 4) for key, clip in clips.items()}
        totals[preset] = {"crf": crf, "total_s": round(sum(seconds.values()), 4), "clips_s": seconds}
        print(f"  {preset:>9} at crf {crf}: {totals[preset]['total_s']:.3f} s over all clips", flush=True)
    best = min(totals, key=lambda p: totals[p]["total_s"])
    reference_total = sum(results[key]["reference"]["encode_s"] for key in clips)
    quality = {key: clip.quality(best, totals[best]["crf"]) for key, clip in clips.items()}
    return {"preset": best, **totals[best], "reference_total_s": round(reference_total, 4),
            "clips_ssim": {k: round(q[0], 5) for k, q in quality.items()},
            "clips_kbytes": {k: round(q[1] / 1024, 1) for k, q in quality.items()}, "by_preset": totals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=0.0, help="SSIM below the reference still counted equal")
    parser.add_argument("--presets", default=",".join(PRESETS))
    args = parser.parse_args(argv)
    presets = [p for p in args.presets.split(",") if p]
    results: dict[str, Any] = {}
    clips: dict[str, Clip] = {}
    for size_name, (width, height, count) in SIZES.items():
        for clip in (Clip("pan", pan_frames(width, height, count)),
                     Clip("disc", synthetic_frames(count, width, height))):
            key = f"{size_name}/{clip.name} {width}x{height}x{count}"
            clips[key] = clip
            results[key] = figures = measure(clip, presets, args.repeats, args.tolerance)
            ref = figures["reference"]
            print(f"[{key}] reference medium/18: SSIM {ref['ssim']:.5f}, {ref['kbytes']} KiB, {ref['encode_s']:.3f} s",
                  flush=True)
            for preset, row in figures["presets"].items():
                if row["crf"] is None:
                    print(f"  {preset:>9}: no CRF in {CRF_RANGE.start}..{CRF_RANGE.stop - 1} reaches it", flush=True)
                else:
                    print(f"  {preset:>9}: crf {row['crf']:>2}  SSIM {row['ssim']:.5f}  {row['kbytes']:>7} KiB  "
                          f"{row['encode_s']:.3f} s  ({row['speedup_vs_reference']}x)", flush=True)
    pick = choose(clips, results, presets, args.repeats)
    print(f"pick: {pick['preset']} crf {pick['crf']} ({pick['total_s']:.3f} s over all clips, "
          f"reference {pick['reference_total_s']:.3f} s)", flush=True)
    machine = machine_info("cpu")
    print(json.dumps({"clips": results, "pick": pick, "tolerance": args.tolerance, "repeats": args.repeats,
                      "machine": machine}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
