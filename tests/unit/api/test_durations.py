"""Durations for people: two units at most, as kubectl prints ages."""

from __future__ import annotations

from kubetune.api.durations import human_duration


def test_durations_read_like_kubectl_ages() -> None:
    seconds = (0, 59, 60, 250, 3600, 3720, 86399, 90000)
    assert [human_duration(s) for s in seconds] == ["0s", "59s", "1m00s", "4m10s", "1h00m", "1h02m", "23h59m", "1d01h"]
