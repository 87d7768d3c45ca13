"""A one-line progress display on stderr: items, items/s, tokens/min, cost so far."""
from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from .runner import JobRunner


def render(runner: JobRunner, width: int = 24) -> str:
    p = runner.progress
    elapsed = max(1e-6, time.monotonic() - p.started)
    done = p.already + p.finished
    share = done / p.total if p.total else 1.0
    bar = "#" * int(share * width) + "." * (width - int(share * width))
    return (f"{runner.job.name} [{bar}] {done:,}/{p.total:,} items  {p.finished / elapsed:,.1f} items/s  "
            f"{p.tokens * 60 / elapsed:,.0f} tok/min  ${p.cost:,.4f}")


async def show(runner: JobRunner, stream: TextIO = sys.stderr) -> None:
    """Redraw in place on a terminal; on a log (cron) write a line every 10 s."""
    tty = stream.isatty()
    try:
        while True:
            await asyncio.sleep(0.2 if tty else 10.0)
            stream.write(("\r" + render(runner)) if tty else render(runner) + "\n")
            stream.flush()
    except asyncio.CancelledError:
        stream.write(("\r" if tty else "") + render(runner) + "\n")
        stream.flush()
        raise
