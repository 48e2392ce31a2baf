"""Nearest-in-time resampling, checked on plain timestamps for many source/target rate pairs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from motionserve.inference.frame_sampling import NearestSampler, StreamClock


def resample(times: list[float], rate: float, span: float) -> list[int]:
    sampler: NearestSampler[int] = NearestSampler(rate)
    chosen: list[int] = []
    for index, t in enumerate(times):
        chosen.extend(sampler.push(index, t))
    chosen.extend(sampler.finish(span))
    return chosen


@settings(max_examples=200, deadline=None)
@given(
    source_fps=st.floats(min_value=1, max_value=60),
    target_fps=st.floats(min_value=1, max_value=60),
    count=st.integers(min_value=1, max_value=120),
)
def test_one_nearest_frame_per_target_time(source_fps: float, target_fps: float, count: int) -> None:
    times = [i / source_fps for i in range(count)]
    span = count / source_fps

    chosen = resample(times, target_fps, span)

    # exactly one output per target time k/target_fps inside the clip
    assert abs(len(chosen) - math.ceil(span * target_fps)) <= 1
    assert chosen == sorted(chosen)  # time never runs backwards
    for k, index in enumerate(chosen):
        target = k / target_fps
        best = min(abs(t - target) for t in times)
        assert abs(times[index] - target) <= best + 1e-3


def test_variable_frame_times_pick_the_frame_on_screen_nearest_each_target() -> None:
    # A GIF whose frames start at 0, 0.1, 0.4, 0.5 s and which ends at 1.0 s.
    assert resample([0, 0.1, 0.4, 0.5], 10, 1.0) == [0, 1, 1, 2, 2, 3, 3, 3, 3, 3]


def test_without_a_rate_every_item_passes_through() -> None:
    sampler: NearestSampler[str] = NearestSampler(None)
    assert [x for item, t in [("a", 0.0), ("b", 0.5)] for x in sampler.push(item, t)] == ["a", "b"]
    assert list(sampler.finish(10)) == []


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        NearestSampler(0)


def test_clock_is_relative_to_the_first_frame_and_tracks_the_end() -> None:
    clock = StreamClock(declared_fps=None)
    for pts, duration in [(10.0, 0.1), (10.1, 0.3), (10.4, None)]:
        clock.advance(clock.time_of(pts), duration)

    assert clock.count == 3
    assert clock.last_t == pytest.approx(0.4)
    assert clock.end == pytest.approx(0.7)  # the last frame lasts as long as the gap before it
    assert clock.measured_fps() == pytest.approx(3 / 0.7)


def test_clock_without_timestamps_assumes_the_declared_rate() -> None:
    clock = StreamClock(declared_fps=8)
    for _ in range(4):
        clock.advance(clock.time_of(None), None)
    assert clock.end == pytest.approx(0.5)
