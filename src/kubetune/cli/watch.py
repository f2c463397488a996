"""``kubetune status --watch``: follow a FineTuneJob until it succeeds or fails.

The status is polled, not watched: the operator rewrites it only when the trainer reports (every few
seconds at most), and a plain GET survives API server restarts that a long-lived watch would not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.live import Live

from kubetune.cli.errors import CliError, CliExit, NotFoundError
from kubetune.cli.render import JobView, OutputFormat, dump, status_renderable, watch_line

# Seconds between reads; the operator's status changes at most about this often.
DEFAULT_INTERVAL = 2.0
# Consecutive failed reads tolerated (an API server restart, a dropped connection) before giving up.
MAX_READ_FAILURES = 5

Obj = dict[str, Any]


def utc_now() -> datetime:
    return datetime.now(UTC)


def observe(read: Callable[[], Obj], *, interval: float, sleep: Callable[[float], None]) -> Iterator[Obj]:
    """Each read of the object, until one in a terminal phase (which is yielded too)."""
    failures = 0
    while True:
        try:
            obj = read()
        except NotFoundError:
            raise
        except CliError:
            failures += 1
            if failures > MAX_READ_FAILURES:
                raise
            sleep(interval)
            continue
        failures = 0
        yield obj
        if JobView.from_object(obj).finished:
            return
        sleep(interval)


def exit_code(obj: Obj) -> CliExit:
    """OK once Succeeded, JOB_FAILED once Failed."""
    return CliExit.JOB_FAILED if JobView.from_object(obj).phase == "Failed" else CliExit.OK


def watch(
    read: Callable[[], Obj],
    *,
    output: OutputFormat,
    console: Console,
    interval: float = DEFAULT_INTERVAL,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> CliExit:
    """Show each change: a live view in a terminal, a line per change otherwise, or each new version of
    the object as JSON Lines / YAML documents. Returns the exit code for the phase it ended in."""
    objects = observe(read, interval=interval, sleep=sleep or time.sleep)
    last: Obj = {}
    if output is not OutputFormat.text:
        seen = None
        for last in objects:
            version = last["metadata"].get("resourceVersion")
            if version != seen:
                seen = version
                text = json.dumps(last) + "\n" if output is OutputFormat.json else "---\n" + dump(last, output=output)
                console.file.write(text)
                console.file.flush()
    elif console.is_terminal:
        with Live(console=console, auto_refresh=False) as live:
            for last in objects:
                live.update(status_renderable(JobView.from_object(last), now=clock()), refresh=True)
    else:
        previous = None
        for last in objects:
            line = watch_line(JobView.from_object(last))
            if line != previous:
                previous = line
                console.print(f"{clock():%H:%M:%S}  {line}", markup=False, highlight=False, soft_wrap=True)
    return exit_code(last)
