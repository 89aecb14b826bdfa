"""Files the daemon does not own: reading a small one defensively, watching directories.

The local source reads files other processes write (Worker metadata, a workspace's
``.yoi/workspace.toml``): a symlink is refused, a FIFO never blocks, and nothing over a size
limit is read whole. It and the file discovery watch directories with watchfiles, and
rescan on a quiet watch as the safety net.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import anyio
import trio
import watchfiles


class FileTooLarge(Exception):
    """The file is larger than the limit it was read with."""


def read_regular_file(path: Path, max_bytes: int) -> tuple[bytes, os.stat_result]:
    """Read a regular file without following a symlink or blocking on a FIFO."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file")
        if st.st_size > max_bytes:
            raise FileTooLarge()
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise FileTooLarge()
        return data, st
    finally:
        os.close(fd)


def watch_stop_event(nursery: trio.Nursery) -> anyio.Event:
    """An event set as soon as ``nursery`` is cancelled: watchfiles waits in a thread that
    notices only its ``stop_event``, so shutdown and reload stay prompt."""
    stop = anyio.Event()

    async def stopper() -> None:
        try:
            await trio.sleep_forever()
        finally:
            stop.set()

    nursery.start_soon(stopper)
    return stop


def watch_changes(
    paths: Iterable[Path],
    stop: anyio.Event,
    *,
    debounce_ms: int,
    step_ms: int,
    timeout_ms: int,
    recursive: bool,
    ignore_permission_denied: bool | None = None,
) -> AsyncIterator[set[tuple[Any, str]]]:
    """Every change under ``paths``, unfiltered (the caller maps each to what it concerns),
    a burst once no new change came for a step; and an empty set after ``timeout_ms``
    without any, so the caller's rescan runs on a quiet watch too. Ends when ``stop`` is set
    (:func:`watch_stop_event`)."""
    changes: AsyncIterator[set[tuple[Any, str]]] = watchfiles.awatch(
        *paths,
        watch_filter=None,
        debounce=debounce_ms,
        step=step_ms,
        stop_event=stop,
        rust_timeout=timeout_ms,
        yield_on_timeout=True,
        recursive=recursive,
        ignore_permission_denied=ignore_permission_denied,
    )
    return changes
