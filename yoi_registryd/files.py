"""Reading a small file the daemon does not own, defensively.

The local source reads files other processes write (Worker metadata, a workspace's
``.yoi/workspace.toml``): a symlink is refused, a FIFO never blocks, and nothing over a size
limit is read whole.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import anyio
import trio


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
