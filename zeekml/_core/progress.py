"""Rich progress on stderr for long CLI work; a no-op when disabled (tests, pipes, library use)."""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, Protocol

StepFn = Callable[[str], None]
"""``step(text)``: the run moved on to ``text`` (``fitting gnn on 7,000 conns``)."""


class RunProgress(Protocol):
    """What a scoring run reports: bytes read per file, then each step after reading."""

    def advance(self, path: str, nbytes: int) -> None: ...

    def step(self, text: str) -> None: ...


class _Silent:
    def advance(self, path: str, nbytes: int) -> None:
        pass

    def step(self, text: str) -> None:
        pass


class _Bars:
    """Two rows: bytes read over all input files, then the step the run is on (fitting and
    scoring each detector, writing), with the time spent so far, so the minutes that learned
    models take are never silent."""

    def __init__(self, bar, total: int):
        self.bar = bar
        self.total = total
        self.read = bar.add_task("reading", total=total or None, detail="")
        self.work = None
        self.steps = 0

    def advance(self, path: str, nbytes: int) -> None:
        self.bar.update(self.read, advance=nbytes, description=f"reading {os.path.basename(path)}")
        done = self.bar.tasks[self.read].completed
        self.bar.update(self.read, detail=f"{done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB",
                        refresh=True)   # once a file: a small file is read within a tick

    def step(self, text: str) -> None:
        self.steps += 1
        if self.work is None:
            self.bar.update(self.read, visible=False)
            self.work = self.bar.add_task(text, total=None, detail="")
        # drawn at once, not at the next tick: a step may last less than a tick
        self.bar.update(self.work, description=text, detail=f"step {self.steps}", refresh=True)


@contextlib.contextmanager
def run_progress(files: list[str], enabled: bool = True) -> Iterator[RunProgress]:
    """Yields a ``RunProgress``; when enabled, shows it on stderr (transient: gone at the end)."""
    if not enabled:
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    total = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        yield _Bars(bar, total)
