"""Rich progress bars for long CLI work; a no-op when disabled (tests, pipes, library use)."""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator


@contextlib.contextmanager
def file_progress(files: list[str], enabled: bool = True) -> Iterator[Callable[[str, int], None]]:
    """Yields ``advance(path, nbytes)``; shows bytes read over all ``files`` when enabled."""
    if not enabled:
        yield lambda path, nbytes: None
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)
    total = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    with Progress(TextColumn("[bold]reading[/bold] {task.description}"), BarColumn(),
                  DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("", total=total or None)

        def advance(path: str, nbytes: int) -> None:
            bar.update(task, advance=nbytes, description=os.path.basename(path))

        yield advance
