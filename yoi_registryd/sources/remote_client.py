"""HTTP plumbing of the remote source: a keep-alive pool, bounded requests, typed failures.

Each remote runtime gets its own small keep-alive ``httpcore.AsyncConnectionPool`` (httpx's
connection layer, on trio through anyio) for as long as its source runs; all of them share
one TLS context.

Whatever goes wrong is reduced here to a :class:`RemoteFailure` carrying one of the typed
codes of contract section 3. Its ``str`` is the code alone: the exception text (which may
name the host) is kept apart in ``detail`` for DEBUG logs and never reaches a response, a
diagnostic or a log line at INFO or above.
"""

from __future__ import annotations

import functools
import re
import ssl
import zlib
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, Protocol

import certifi
import httpcore
import msgspec
import trio

from yoi_registryd import __version__
from yoi_registryd.json_depth import MAX_JSON_DEPTH, TooDeep, check_depth
from yoi_registryd.secrets import Secret

TIMEOUT: Final = "remote_runtime_timeout"
NETWORK_ERROR: Final = "remote_runtime_network_error"
AUTH_FAILED: Final = "remote_runtime_auth_failed"
"""The runtime refused the credentials themselves (401)."""
FORBIDDEN: Final = "remote_runtime_forbidden"
"""The runtime took the credentials but refused the request (403): permission, workspace."""
MALFORMED: Final = "remote_runtime_malformed_response"
HTTP_ERROR: Final = "remote_runtime_http_error"
UNSUPPORTED: Final = "remote_runtime_unsupported"
WORKER_NOT_FOUND: Final = "remote_worker_not_found"
TOKEN_UNAVAILABLE: Final = "remote_runtime_token_unavailable"
KEY_UNAVAILABLE: Final = "remote_runtime_key_unavailable"

_KEEPALIVE_EXPIRY: Final = 60.0
_MAX_CONNECTIONS: Final = 16
"""Polls use one connection; the rest serve concurrent worker operations."""
_MAX_KEEPALIVE: Final = 2
_MAX_PREPARED: Final = 16
_USER_AGENT: Final = f"yoi-registryd/{__version__}".encode()


_SAFE_MESSAGES: Final = {
    TIMEOUT: "remote runtime {rid} did not answer within the timeout",
    NETWORK_ERROR: "remote runtime {rid} could not be reached",
    AUTH_FAILED: "remote runtime {rid} refused the registry's credentials{status}",
    FORBIDDEN: "remote runtime {rid} accepted the registry's credentials but refused "
    "the request{status}",
    MALFORMED: "remote runtime {rid} sent a reply that is not a valid worker-runtime v1 answer",
    UNSUPPORTED: "remote runtime {rid} does not support the request{status}",
    WORKER_NOT_FOUND: "remote runtime {rid} does not know the worker{status}",
    TOKEN_UNAVAILABLE: "the bearer token for remote runtime {rid} is unavailable",
    KEY_UNAVAILABLE: "the signing key for remote runtime {rid} is unavailable",
}
"""Per code, the message :meth:`RemoteFailure.safe_message` builds from the runtime id."""
_UNEXPECTED_STATUS: Final = "remote runtime {rid} answered with an unexpected status{status}"


class Credentials(Protocol):
    """What a request asks of the source's credentials (``remote_auth.RemoteCredentials``):
    declared here so that this plumbing does not depend on how they are loaded or minted."""

    def authorization(self, permission: str) -> Secret | None:
        """The ``Authorization`` value for a request needing ``permission``, if any."""
        ...


class RemoteFailure(Exception):
    """A typed failure talking to a remote runtime.

    ``remote_code`` is the runtime's own error code (``runtime_stopped``...), used only to
    choose a mapping, never served. ``detail`` is for DEBUG logs only (it may hold a URL).
    """

    def __init__(
        self,
        code: str,
        *,
        status: int | None = None,
        remote_code: str | None = None,
        reason: str | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(code)
        self.code = code
        self.status = status
        self.remote_code = remote_code
        self.reason = reason
        """A safe, fixed explanation (never remote text), shown in the message."""
        self.detail = detail

    def safe_message(self, runtime_id: str) -> str:
        """A message naming the runtime id (and the runtime's error code, a checked token)
        only: safe to serve and to log at any level."""
        status = ""
        if self.status is not None:
            # The runtime's own code, as yoi's backend passes it on (contract-v2 section 1.8.3): one
            # of its snake_case tokens (checked when decoded), never its message.
            code = f" {self.remote_code}" if self.remote_code else ""
            status = f" (HTTP {self.status}{code})"
        template = _SAFE_MESSAGES.get(self.code, _UNEXPECTED_STATUS)
        text = template.format(rid=repr(runtime_id), status=status)
        return f"{text}: {self.reason}" if self.reason else text


class _RemoteErrorBody(msgspec.Struct):
    code: str


class _RemoteErrorEnvelope(msgspec.Struct):
    error: _RemoteErrorBody


_ERROR_DECODER: Final = msgspec.json.Decoder(_RemoteErrorEnvelope)


_REMOTE_CODE_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_FORBIDDEN_REASONS: Final = {
    "forbidden": "the token lacks the permission this request needs",
    "workspace_scope_required": "the credentials name no workspace",
    "server_scope_required": "the token names no server id",
    "workspace_owner_mismatch": "the workspace is bound to another server id at the runtime",
}
"""What a current runtime's 403 codes mean (contract-v2 section 4.5), shown as the reason."""


def failure_for_status(status: int, body: bytes) -> RemoteFailure:
    """Classify a non-2xx answer (contract section 3's failure classes)."""
    try:
        remote_code: str | None = _ERROR_DECODER.decode(body).error.code[:64]
    except (msgspec.DecodeError, msgspec.ValidationError):
        remote_code = None
    if remote_code is not None and not _REMOTE_CODE_RE.fullmatch(remote_code):
        remote_code = None  # not one of yoi's codes: never shown, never used
    if status == 401:
        code = AUTH_FAILED
    elif status == 403:
        reason = _FORBIDDEN_REASONS.get(remote_code or "")
        return RemoteFailure(FORBIDDEN, status=status, remote_code=remote_code, reason=reason)
    elif status == 404:
        code = WORKER_NOT_FOUND
    elif status in (405, 501):
        code = UNSUPPORTED
    else:
        code = HTTP_ERROR
    return RemoteFailure(code, status=status, remote_code=remote_code)


class RemoteResponse(msgspec.Struct, frozen=True):
    status: int
    body: bytes


class RemoteClient:
    """One source's view of its connection pool: base URL, token, timeout and size cap.

    Requests go straight to httpcore (the connection layer under httpx): a poll's GET is
    built once and sent again as long as its credentials stay the same, where httpx would parse
    the URL, merge headers and cookies and build a request and response model every time
    (most of a poll's CPU, measured: ``benchmarks/remote_freshness.py``).
    """

    def __init__(
        self,
        pool: httpcore.AsyncConnectionPool,
        base_url: Secret,
        timeout: float,
        max_bytes: int,
        credentials: Credentials,
    ) -> None:
        self._pool = pool
        base = base_url.reveal().rstrip("/")
        self._base = Secret(base)
        netloc = base.split("://", 1)[1].split("/", 1)[0]
        self._host_header = netloc.encode("ascii")
        self._timeout = timeout
        self._extensions = {
            "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        }
        self._max_bytes = max_bytes
        self.credentials = credentials
        self._prepared: dict[tuple[str, str, str], tuple[Secret | None, httpcore.Request]] = {}
        """Bodiless requests built once per method, path and permission, with the
        ``Authorization`` value they carry (rebuilt when the credentials give another)."""

    async def get(self, path: str, permission: str) -> bytes:
        """GET a 2xx body, or raise a typed :class:`RemoteFailure`."""
        response = await self.request("GET", path, permission)
        if not 200 <= response.status < 300:
            raise failure_for_status(response.status, response.body)
        return response.body

    async def post(self, path: str, permission: str, body: bytes) -> RemoteResponse:
        return await self.request("POST", path, permission, body)

    def _build(
        self, method: str, path: str, authorization: Secret | None, body: bytes | None
    ) -> httpcore.Request:
        headers = [
            (b"Host", self._host_header),
            (b"Accept", b"application/json"),
            (b"Accept-Encoding", ACCEPT_ENCODING.encode()),
            (b"User-Agent", _USER_AGENT),
        ]
        if authorization is not None:
            headers.append((b"Authorization", authorization.reveal().encode("latin-1")))
        if body is not None:
            headers.append((b"Content-Type", b"application/json"))
            headers.append((b"Content-Length", str(len(body)).encode()))
        return httpcore.Request(
            method,
            self._base.reveal() + path,
            headers=headers,
            content=body,
            extensions=self._extensions,
        )

    def _prepare(
        self, method: str, path: str, permission: str, body: bytes | None
    ) -> httpcore.Request:
        authorization = self.credentials.authorization(permission)
        if body is not None:
            return self._build(method, path, authorization, body)
        key = (method, path, permission)
        prepared = self._prepared.get(key)
        # The credentials hand out the same object while the value stays the same.
        if prepared is not None and prepared[0] is authorization:
            return prepared[1]
        if len(self._prepared) >= _MAX_PREPARED:
            self._prepared.clear()
        request = self._build(method, path, authorization, None)
        self._prepared[key] = (authorization, request)
        return request

    async def request(
        self, method: str, path: str, permission: str, body: bytes | None = None
    ) -> RemoteResponse:
        """One request under one overall deadline, reading at most ``max_bytes`` of body.

        ``permission`` is the one the route needs (``yoi_registryd.capability``): a minted
        capability token carries exactly it.
        """
        request = self._prepare(method, path, permission, body)
        try:
            with trio.fail_after(self._timeout):
                response = await self._pool.handle_async_request(request)
                try:
                    return RemoteResponse(response.status, await self._read(response))
                finally:
                    await response.aclose()
        except trio.TooSlowError:
            raise RemoteFailure(TIMEOUT, detail=f"{method} {path}: overall deadline") from None
        except httpcore.TimeoutException as exc:
            raise RemoteFailure(TIMEOUT, detail=f"{method} {path}: {exc!r}") from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            raise RemoteFailure(NETWORK_ERROR, detail=f"{method} {path}: {exc!r}") from None
        except (httpcore.ConnectionNotAvailable, OSError) as exc:
            raise RemoteFailure(NETWORK_ERROR, detail=f"{method} {path}: {exc!r}") from None

    async def _read(self, response: httpcore.Response) -> bytes:
        """The decoded body, refused as soon as it grows past ``max_bytes`` (decoded, as it
        streams in: a small compressed answer cannot inflate past the bound in memory) or
        nests JSON deeper than :data:`~yoi_registryd.json_depth.MAX_JSON_DEPTH`."""
        limit = self._max_bytes
        encoding = b""
        for name, value in response.headers:
            lowered = name.lower()
            if lowered == b"content-length" and value.isdigit():
                if len(value) > 19 or int(value) > limit:
                    raise RemoteFailure(MALFORMED, reason=_TOO_LARGE)
            elif lowered == b"content-encoding":
                encoding = value
        body = BoundedBody(encoding.decode("latin-1"), limit)
        stream = response.stream
        assert isinstance(stream, AsyncIterable)
        async for chunk in stream:
            body.feed(chunk)
        data = body.finish()
        try:
            check_depth(data)
        except TooDeep:
            raise RemoteFailure(MALFORMED, reason=_TOO_DEEP) from None
        return data


_TOO_LARGE: Final = "the response is larger than max_response_bytes"
_TOO_DEEP: Final = f"the response nests JSON deeper than {MAX_JSON_DEPTH} levels"
ACCEPT_ENCODING: Final = "gzip, deflate"
"""The content codings :class:`BoundedBody` decodes, and so the only ones asked for."""
_WBITS: Final = {
    "gzip": 16 + zlib.MAX_WBITS,
    "x-gzip": 16 + zlib.MAX_WBITS,
    "deflate": zlib.MAX_WBITS,
}


class BoundedBody:
    """A response body decoded as it arrives, never holding more than ``limit`` bytes of it.

    A decoder that inflates each compressed chunk whole (httpx's does) turns 64 KiB of a gzip
    bomb into 64 MiB before a size check could see them. Here the raw bytes are inflated with
    zlib's ``max_length``: output past the limit is never produced.
    """

    def __init__(self, content_encoding: str, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        coding = content_encoding.strip().lower()
        self._inflate = None
        if coding not in ("", "identity"):
            if coding not in _WBITS:
                raise RemoteFailure(MALFORMED, reason="the response has an unsupported encoding")
            self._inflate = zlib.decompressobj(_WBITS[coding])

    def feed(self, raw: bytes) -> None:
        inflate = self._inflate
        if inflate is None:
            self._keep(raw)
            return
        try:
            while raw and not inflate.eof:
                self._keep(inflate.decompress(raw, self._room()))
                raw = inflate.unconsumed_tail
        except zlib.error:
            raise RemoteFailure(
                MALFORMED, reason="the response is not validly compressed"
            ) from None

    def finish(self) -> bytes:
        if self._inflate is not None:
            try:
                self._keep(self._inflate.flush(self._room()))
            except zlib.error:
                raise RemoteFailure(
                    MALFORMED, reason="the response is not validly compressed"
                ) from None
            if not self._inflate.eof:
                raise RemoteFailure(MALFORMED, reason="the response is not validly compressed")
        return b"".join(self._chunks)

    def _room(self) -> int:
        """How much more output may be produced: one byte past the limit tells it was hit."""
        return self._limit - self._size + 1

    def _keep(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise RemoteFailure(MALFORMED, reason=_TOO_LARGE)
        if data:
            self._chunks.append(data)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every remote client of the process: loading CAs is the costly part."""
    return ssl.create_default_context(cafile=certifi.where())


@asynccontextmanager
async def open_http_client() -> AsyncIterator[httpcore.AsyncConnectionPool]:
    """A keep-alive connection pool for one remote runtime, closed when the source stops.

    One pool per runtime rather than one for the whole daemon: httpcore's pool walks every
    pooled connection on each request, and N runtimes are N origins, so one shared pool
    costs O(N) per request. Measured with 200 runtimes polled every second
    (``benchmarks/remote_freshness.py``): a shared pool kept the daemon at a full core;
    one small pool per runtime, sharing one TLS context, costs far less (see
    ``docs/remote-source.md``). No proxy variables, ``.netrc`` or redirects: httpcore
    reads no environment and follows nothing.
    """
    pool = httpcore.AsyncConnectionPool(
        ssl_context=tls_context(),
        max_connections=_MAX_CONNECTIONS,
        max_keepalive_connections=_MAX_KEEPALIVE,
        keepalive_expiry=_KEEPALIVE_EXPIRY,
        http1=True,
        http2=False,
    )
    try:
        yield pool
    finally:
        with trio.CancelScope(shield=True):
            await pool.aclose()
