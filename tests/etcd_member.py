"""One real etcd member on loopback (Debian package ``etcd-server``), for the etcd discovery
tests and ``benchmarks/discovery_scale.py``: started on free ports, spoken to over etcd's v3
HTTP/JSON gateway."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.daemon_process import free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdMember:
    """One etcd member with its data in ``directory``; ``kill`` and ``start`` again keep it.

    Each call takes an optional client, so that a caller making thousands of them can keep
    one connection."""

    def __init__(self, directory: Path, name: str = "test") -> None:
        self.directory = directory
        self.name = name
        self.port, self.peer = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer}"
        self.process = subprocess.Popen(
            [
                ETCD,
                f"--name={self.name}",
                f"--data-dir={self.directory}",
                f"--listen-client-urls={self.url}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster={self.name}={peer}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def ready(self, deadline_s: float = 20) -> None:
        """Wait until ``/health`` answers 200 (``trio.TooSlowError`` after ``deadline_s``)."""
        with trio.fail_after(deadline_s):
            async with httpx.AsyncClient(timeout=1) as client:
                while True:
                    try:
                        if (await client.get(f"{self.url}/health")).status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                    await trio.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    async def call(
        self, path: str, body: dict[str, Any], client: httpx.AsyncClient | None = None
    ) -> dict[str, Any]:
        if client is None:
            async with httpx.AsyncClient(timeout=5) as own:
                return await self.call(path, body, own)
        response = await client.post(f"{self.url}{path}", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def put(
        self,
        key: str,
        value: Any,
        lease: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        body = {"key": b64(key), "value": b64(json.dumps(value))}
        await self.call("/v3/kv/put", {**body, **({"lease": lease} if lease else {})}, client)

    async def delete(self, key: str) -> None:
        await self.call("/v3/kv/deleterange", {"key": b64(key)})

    async def grant(self, ttl: int, client: httpx.AsyncClient | None = None) -> str:
        """A new lease of ``ttl`` seconds; its id."""
        lease: str = (await self.call("/v3/lease/grant", {"TTL": ttl}, client))["ID"]
        return lease
