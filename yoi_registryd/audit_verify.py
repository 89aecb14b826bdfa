"""``yoi-registryd audit verify FILE...``: check the hash chain of audit files.

With ``audit.chain = true`` every record carries ``seq`` (1, 2, 3... in the order written)
and ``prev``: the SHA-256 (hex) of the previous record's line exactly as it is in the file,
without its newline (64 zeros for record 1). Given the files of one trail in order (rotated
ones first), this walks the records and reports the first that was changed, removed or
reordered. The last record is covered once the next one is written after it; the first
record of the files given is taken as they have it unless it is record 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from yoi_registryd.audit import GENESIS, line_hash

EXIT_INTACT: Final = 0
EXIT_BROKEN: Final = 1
"""A record was changed, removed or reordered, or a line is not a chained record."""
EXIT_UNREADABLE: Final = 2
"""A file could not be read (or the command line was wrong)."""


class _Link(msgspec.Struct):
    seq: int
    prev: str


@dataclass(frozen=True)
class _Entry:
    where: str
    line: bytes
    link: _Link


class BrokenChain(Exception):
    """What ``verify`` found first, as the message to print."""


def _entries(paths: Sequence[Path]) -> list[_Entry]:
    entries = []
    for path in paths:
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            where = f"{path}:{number}"
            try:
                link = msgspec.json.decode(line, type=_Link)
            except msgspec.DecodeError:
                raise BrokenChain(f"{where}: not a chained audit record") from None
            entries.append(_Entry(where, line, link))
    return entries


def verify(paths: Sequence[Path]) -> str:
    """A summary of an intact chain; raises :class:`BrokenChain` at the first fault and
    ``OSError`` when a file cannot be read."""
    entries = _entries(paths)
    if not entries:
        return "no records"
    first = entries[0]
    if first.link.seq == 1 and first.link.prev != GENESIS:
        raise BrokenChain(f"{first.where}: record 1 was changed (it does not start the chain)")
    position = {entry.link.seq: i for i, entry in enumerate(entries)}
    for i in range(1, len(entries)):
        before, entry = entries[i - 1], entries[i]
        expected = before.link.seq + 1
        if entry.link.seq != expected:
            later = position.get(expected, -1)
            if later > i or entry.link.seq < expected:
                where = entries[later].where if later > i else "nowhere"
                raise BrokenChain(
                    f"{entry.where}: reordered: record {entry.link.seq} follows record "
                    f"{before.link.seq} (record {expected} is at {where})"
                )
            last_missing = entry.link.seq - 1
            missing = str(expected) if last_missing == expected else f"{expected} to {last_missing}"
            raise BrokenChain(f"{entry.where}: removed: record {missing}, before this line")
        if entry.link.prev != line_hash(before.line):
            raise BrokenChain(
                f"{before.where}: record {before.link.seq} was changed "
                f"(record {entry.link.seq}, next, holds the hash of another line)"
            )
    note = "" if first.link.seq == 1 else f" (record {first.link.seq - 1} is not in these files)"
    return f"{len(entries)} records, {first.link.seq} to {entries[-1].link.seq}: intact{note}"


def main(paths: Sequence[str]) -> int:
    """Print the verdict; the exit code as the module says."""
    try:
        summary = verify([Path(p) for p in paths])
    except OSError as exc:
        print(f"cannot read {exc.filename}: {exc.strerror}")
        return EXIT_UNREADABLE
    except BrokenChain as broken:
        print(broken)
        return EXIT_BROKEN
    print(summary)
    return EXIT_INTACT
