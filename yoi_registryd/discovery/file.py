"""``kind = "file"``: runtimes listed in a JSON or TOML file, watched with watchfiles.

In the spirit of Prometheus' ``file_sd``: whatever writes the file (consul-template, a
Kubernetes ConfigMap, a deploy script) owns the list. The file holds ``runtimes``, an array
of runtime descriptions (in JSON a bare array is accepted too). Its directory is watched
(any change there rereads it), so a file replaced by a rename or a ConfigMap's symlink swap is
seen; every few seconds it is read again as a safety net
(only a changed content is applied). A file that is missing, too large or not valid is a
failed refresh: the last good set stays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import msgspec
import trio

from yoi_registryd.config import FileDiscoveryConfig
from yoi_registryd.discovery.runner import DiscoveryFailure, DiscoveryReporter
from yoi_registryd.files import watch_changes, watch_stop_event

FILE_MISSING: Final = "discovery_file_missing"
FILE_UNREADABLE: Final = "discovery_file_unreadable"
FILE_TOO_LARGE: Final = "discovery_file_too_large"
FILE_INVALID: Final = "discovery_file_invalid"


def parse_runtimes(data: bytes, toml: bool) -> list[tuple[str, Any]]:
    """The records of a discovery file, each with its position; :class:`DiscoveryFailure`
    when the file as a whole is not a list of runtimes."""
    try:
        decoded: Any = msgspec.toml.decode(data) if toml else msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        kind = "TOML" if toml else "JSON"
        raise DiscoveryFailure(FILE_INVALID, f"the file is not valid {kind}: {exc}") from None
    if isinstance(decoded, dict) and set(decoded) <= {"runtimes"}:
        decoded = decoded.get("runtimes", [])
    if not isinstance(decoded, list):
        raise DiscoveryFailure(FILE_INVALID, "expected an array 'runtimes' of runtime tables")
    return [(f"runtimes[{i}]", record) for i, record in enumerate(decoded)]


class FileDiscovery:
    """Reads the file at start and whenever it changes."""

    RESCAN_MS: Final = 5_000
    """The file is read again after this long without a change (the safety net)."""
    QUIET_MS: Final = 50
    """A burst of changes is read once no new one came for this long."""

    def __init__(self, entry: FileDiscoveryConfig) -> None:
        self.entry = entry
        self.path = Path(entry.path)
        self._last: bytes | None = None

    def _read(self) -> bytes:
        try:
            with self.path.open("rb") as f:
                data = f.read(self.entry.max_file_bytes + 1)
        except FileNotFoundError:
            raise DiscoveryFailure(FILE_MISSING, "the discovery file does not exist") from None
        except OSError as exc:
            raise DiscoveryFailure(
                FILE_UNREADABLE, f"cannot read the discovery file: {exc.strerror}"
            ) from None
        if len(data) > self.entry.max_file_bytes:
            raise DiscoveryFailure(
                FILE_TOO_LARGE, f"the file is larger than {self.entry.max_file_bytes} bytes"
            )
        return data

    async def refresh(self, reporter: DiscoveryReporter) -> None:
        """Read the file and report it, unless its content is what was last applied."""
        try:
            data = await trio.to_thread.run_sync(self._read)
            if data == self._last:
                return
            records = parse_runtimes(data, self.path.suffix.lower() == ".toml")
        except DiscoveryFailure as failure:
            self._last = None
            reporter.failed(failure)
            return
        await reporter.found(records)
        self._last = data

    async def run(self, reporter: DiscoveryReporter) -> None:
        await self.refresh(reporter)
        async with trio.open_nursery() as nursery:
            stop = watch_stop_event(nursery)
            try:
                # Any change in the directory: a ConfigMap swaps a symlink beside the file.
                async for _changes in watch_changes(
                    [self.path.parent],
                    stop,
                    debounce_ms=self.QUIET_MS,
                    step_ms=self.QUIET_MS,
                    timeout_ms=self.RESCAN_MS,
                    recursive=False,
                ):
                    await self.refresh(reporter)
            except* (OSError, RuntimeError) as group:
                raise DiscoveryFailure(
                    FILE_UNREADABLE,
                    "cannot watch the discovery file's directory: "
                    + "; ".join(type(e).__name__ for e in group.exceptions),
                ) from None
            nursery.cancel_scope.cancel()
