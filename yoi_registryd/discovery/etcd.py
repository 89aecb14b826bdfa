"""``kind = "etcd"``: one runtime description (JSON) per key under a prefix, followed live.

One range request reads the prefix and its revision, then a watch from the next revision
follows every change (etcd's v3 HTTP/JSON gateway over httpx: ``/v3/kv/range`` and the
streaming ``/v3/watch``; keys and values are base64). A key deleted, or whose lease expired,
removes its runtime. The read reports the whole set, each watch message only the keys it
names (decoded once), so one key put costs one record whatever the size of the set. A broken
stream, an etcd that went away or a compacted revision ends the backend with a
:class:`DiscoveryFailure`: it is restarted with backoff (trying the next endpoint) and reads
the prefix again; meanwhile the last good set stays.
"""

from __future__ import annotations

import base64
from typing import Any, Final

import httpx
import msgspec

from yoi_registryd.config import EtcdDiscoveryConfig
from yoi_registryd.discovery.runner import DiscoveryFailure, DiscoveryReporter
from yoi_registryd.json_depth import decode_bounded

ETCD_UNAVAILABLE: Final = "discovery_etcd_unavailable"
ETCD_PROTOCOL: Final = "discovery_etcd_protocol"
_MAX_LINE: Final = 8 * 1024 * 1024


def _b64(text: bytes) -> str:
    return base64.b64encode(text).decode()


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's range end of every key starting with ``prefix`` (the prefix plus one)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class EtcdDiscovery:
    """Reads the prefix, then watches it: reports the whole set, then each change."""

    _rotation = 0

    def __init__(self, entry: EtcdDiscoveryConfig) -> None:
        self.entry = entry
        self.prefix = entry.prefix.encode()
        self.range = {"key": _b64(self.prefix), "range_end": _b64(prefix_range_end(self.prefix))}
        EtcdDiscovery._rotation += 1
        self.endpoint = entry.endpoints[EtcdDiscovery._rotation % len(entry.endpoints)]

    def _record(self, key: bytes, value: bytes) -> tuple[str, tuple[str, Any]]:
        """A key's record by its identity (the whole key: distinct keys never collide) with
        where it was (the key below the prefix, shortened, for refusals)."""
        where = key[len(self.prefix) :].decode("utf-8", "replace")[:120] or "(prefix)"
        try:
            raw = decode_bounded(msgspec.json.decode, value)
        except (msgspec.DecodeError, ValueError):
            raw = "not a JSON object"
        return key.decode("utf-8", "surrogateescape"), (where, raw)

    async def run(self, reporter: DiscoveryReporter) -> None:
        timeout = self.entry.timeout.total_seconds()
        async with httpx.AsyncClient(
            base_url=self.endpoint, timeout=httpx.Timeout(timeout, read=None)
        ) as client:
            try:
                revision, records = await self._read(client)
                await reporter.found_keyed(records)
                await self._watch(client, reporter, revision)
            except httpx.HTTPError as exc:
                raise DiscoveryFailure(
                    ETCD_UNAVAILABLE, f"etcd did not answer ({type(exc).__name__})"
                ) from None
            except (KeyError, TypeError, ValueError):
                raise DiscoveryFailure(
                    ETCD_PROTOCOL, "etcd's answer has an unexpected shape"
                ) from None
        raise DiscoveryFailure(ETCD_UNAVAILABLE, "etcd ended the watch")

    async def _read(self, client: httpx.AsyncClient) -> tuple[int, dict[str, tuple[str, Any]]]:
        deadline = self.entry.timeout.total_seconds()
        response = await client.post("/v3/kv/range", json=self.range, timeout=deadline)
        if response.status_code != 200 or len(response.content) > _MAX_LINE:
            raise DiscoveryFailure(ETCD_PROTOCOL, f"range answered HTTP {response.status_code}")
        body = self._decode(response.content)
        records = dict(
            self._record(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", "")))
            for kv in body.get("kvs") or ()
        )
        return int(body["header"]["revision"]), records

    async def _watch(
        self, client: httpx.AsyncClient, reporter: DiscoveryReporter, revision: int
    ) -> None:
        create = {"create_request": {**self.range, "start_revision": str(revision + 1)}}
        async with client.stream("POST", "/v3/watch", json=create) as response:
            if response.status_code != 200:
                raise DiscoveryFailure(ETCD_PROTOCOL, f"watch answered HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if len(line) > _MAX_LINE:
                    raise DiscoveryFailure(ETCD_PROTOCOL, "a watch message is too large")
                if not line.strip():
                    continue
                result = self._decode(line.encode()).get("result")
                if not isinstance(result, dict):
                    raise DiscoveryFailure(ETCD_PROTOCOL, "a watch message has no result")
                if result.get("canceled") or result.get("compact_revision"):
                    raise DiscoveryFailure(ETCD_PROTOCOL, "etcd cancelled the watch")
                put: dict[str, tuple[str, Any]] = {}
                deleted: set[str] = set()
                for event in result.get("events") or ():
                    kv = event["kv"]
                    key = base64.b64decode(kv["key"])
                    if event.get("type") == "DELETE":
                        name = key.decode("utf-8", "surrogateescape")
                        put.pop(name, None)
                        deleted.add(name)
                    else:
                        name, record = self._record(key, base64.b64decode(kv.get("value", "")))
                        deleted.discard(name)
                        put[name] = record
                if put or deleted:
                    await reporter.changed(put, deleted)

    @staticmethod
    def _decode(data: bytes) -> dict[str, Any]:
        try:
            body = decode_bounded(msgspec.json.decode, data)
        except (msgspec.DecodeError, ValueError):
            raise DiscoveryFailure(ETCD_PROTOCOL, "etcd's answer is not JSON") from None
        if not isinstance(body, dict):
            raise DiscoveryFailure(ETCD_PROTOCOL, "etcd's answer is not a JSON object")
        return body
