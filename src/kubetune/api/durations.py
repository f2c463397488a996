"""Durations for people, in status fields such as ``status.progress.eta`` and ``status.estimate.duration``."""

from __future__ import annotations


def human_duration(seconds: int) -> str:
    """4m10s, 1h02m, 3d04h: two units at most, as kubectl prints ages."""
    minutes, secs = divmod(max(0, seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
