"""Timing logic for frame sampling, kept free of PyAV so it can be tested on plain timestamps.

`StreamClock` turns presentation times into times relative to the first frame and tracks where the
decoded part of the stream ends. `NearestSampler` resamples a stream of timestamped items to a fixed
rate by picking, for each target time k/rate, the item whose timestamp is nearest.
"""

from __future__ import annotations

from typing import Generic, Iterator, TypeVar

T = TypeVar("T")

# Slack when comparing timestamps that went through integer time bases (1/90000, 1/15360...).
EPS = 1e-4


class NearestSampler(Generic[T]):
    """Nearest-in-time resampling to a fixed rate, streaming: holds at most one previous item.

    With `rate=None` every item passes through unchanged. Otherwise a target time is settled as soon
    as an item at or after it arrives: the nearer of that item and the previous one wins (ties go to
    the earlier item). An item repeats only when the rate exceeds the source's, and is skipped only
    when the rate is lower, so the output has exactly one item per target.
    """

    def __init__(self, rate: float | None) -> None:
        if rate is not None and not rate > 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.k = 0  # index of the next target time
        self.prev: tuple[T, float] | None = None

    def _target(self) -> float:
        assert self.rate is not None
        return self.k / self.rate

    def push(self, item: T, t: float) -> Iterator[T]:
        """Feed the next item (non-decreasing `t`); yields the items chosen for settled targets."""
        if self.rate is None:
            yield item
            return
        while self._target() <= t + EPS:
            target = self._target()
            if self.prev is not None and target - self.prev[1] <= t - target:
                yield self.prev[0]
            else:
                yield item
            self.k += 1
        self.prev = (item, t)

    def finish(self, span: float) -> Iterator[T]:
        """Targets after the last item but before `span` (the end of the clip) map to the last item."""
        if self.rate is None or self.prev is None:
            return
        while self._target() < span - EPS:
            yield self.prev[0]
            self.k += 1


class StreamClock:
    """Times relative to the first frame, frames counted, and the end of the latest frame."""

    def __init__(self, declared_fps: float | None) -> None:
        self.fps = declared_fps
        self.t0: float | None = None
        self.count = 0  # frames accepted with `advance`
        self.last_t = 0.0
        self.end = 0.0  # start plus duration of the latest frame

    def time_of(self, pts_time: float | None) -> float:
        """Relative time of a frame; frames without a timestamp are assumed to follow a constant rate."""
        t = float(pts_time) if pts_time is not None else self.count / (self.fps or 1.0)
        if self.t0 is None:
            self.t0 = t
        return t - self.t0

    def advance(self, t: float, duration: float | None) -> None:
        """Count a frame at relative time `t` lasting `duration` seconds (None or 0 when unknown)."""
        if duration:
            length = duration  # GIF per-frame delays live here
        elif self.count and t > self.last_t:
            length = t - self.last_t
        else:
            length = 1.0 / (self.fps or 1.0)
        self.count += 1
        self.last_t = max(self.last_t, t)
        self.end = max(self.end, t + length)

    def measured_fps(self) -> float:
        """Average rate of the frames seen, for sources that declare none."""
        # A single frame has no rate; 1 fps keeps arithmetic downstream finite.
        return self.count / self.end if self.count > 1 and self.end > 0 else 1.0
