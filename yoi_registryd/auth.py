"""Caller identity: bearer tokens per client, and the workspace a caller acts for.

Backend clients are configured in ``[[clients]]``. Only a token's SHA-256 is kept in memory:
the config gives it directly (``token_sha256``) or names where the token lives (a file, an
environment variable, a systemd credential ``$CREDENTIALS_DIRECTORY/<name>``), and the
token is hashed as soon as it is read. A presented token is hashed and compared with every
client's digest using :func:`hmac.compare_digest`, without stopping at a match, so the time
taken says nothing about which client, or how much of a token, matched.

With no clients configured, requests carry no token and are accepted only from loopback
addresses and unix sockets. The acting workspace comes from ``X-Yoi-Workspace`` or the path
of a workspace-scoped route (``/api/w/{workspace_id}/...``) and must be one the client may
act for.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from yoi_registryd.config import ANY_WORKSPACE, ClientConfig, ConfigError
from yoi_registryd.errors import (
    Forbidden,
    InvalidIdentifier,
    Unauthenticated,
    WorkspaceMismatch,
)
from yoi_registryd.ids import is_valid_identifier
from yoi_registryd.secrets import TokenUnavailable, load_token

WORKSPACE_HEADER: Final = "X-Yoi-Workspace"
PATH_WORKSPACE: Final = "workspace_id"
"""The path parameter of the workspace-scoped routes, ``/api/w/{workspace_id}/...``."""
MAX_BEARER_TOKEN_BYTES: Final = 4096
_AUTHORIZATION: Final = b"authorization"
_WORKSPACE: Final = WORKSPACE_HEADER.lower().encode("ascii")


@dataclass(frozen=True)
class Client:
    """A configured client: its name, its token's digest, where it may act."""

    name: str
    token_digest: bytes
    workspaces: frozenset[str] | None
    """None: any workspace (``"*"``)."""
    operator: bool = False
    """``operator = true`` in its config: see :attr:`is_operator`."""

    def __repr__(self) -> str:  # never print the digest
        return f"Client(name={self.name!r})"

    def may_act_for(self, workspace: str) -> bool:
        return self.workspaces is None or workspace in self.workspaces

    @property
    def is_operator(self) -> bool:
        """May read what concerns every workspace at once (the operator endpoints): a client
        allowed every workspace (``"*"``), or one marked ``operator = true``."""
        return self.workspaces is None or self.operator


def token_digest(token: str | bytes) -> bytes:
    raw = token.encode("utf-8") if isinstance(token, str) else token
    return hashlib.sha256(raw).digest()


def load_clients(
    configs: Sequence[ClientConfig], environ: Mapping[str, str] | None = None
) -> list[Client]:
    """Read each client's token (or take its digest); :class:`ConfigError` names every
    client whose token cannot be had, never the token."""
    problems: list[str] = []
    clients: list[Client] = []
    seen: dict[bytes, str] = {}
    for i, cfg in enumerate(configs):
        key = f"clients[{i}]"
        if cfg.token_sha256 is not None:
            digest = bytes.fromhex(cfg.token_sha256)
        else:
            try:
                token = load_token(
                    token_file=cfg.token_file,
                    token_env=cfg.token_env,
                    token_credential=cfg.token_credential,
                    environ=environ,
                )
            except TokenUnavailable as exc:
                problems.append(f"{key}: {exc}")
                continue
            if token is None:
                problems.append(f"{key}: no token configured")
                continue
            digest = token_digest(token.reveal())
        if digest in seen:
            problems.append(f"{key}: has the same token as client {seen[digest]!r}")
            continue
        seen[digest] = cfg.name
        allowed = None if ANY_WORKSPACE in cfg.workspaces else frozenset(cfg.workspaces)
        clients.append(Client(cfg.name, digest, allowed, cfg.operator))
    if problems:
        raise ConfigError(problems)
    return clients


def is_local_transport(scope: Mapping[str, Any]) -> bool:
    """A unix socket (no client or server address) or a loopback peer address."""
    client = scope.get("client")
    if client is None:
        return scope.get("server") is None
    try:
        return _is_loopback(str(client[0]))
    except (IndexError, TypeError):
        return False


@functools.lru_cache(maxsize=1024)
def _is_loopback(host: str) -> bool:
    """Memoized: parsing the peer's address is a visible share of a request's CPU."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """A header's value; repeated headers are joined with ``, `` as HTTP says."""
    values = [value for key, value in headers if key.lower() == name]
    if not values:
        return None
    return b", ".join(values)


def _bearer_token(value: bytes) -> bytes | None:
    scheme, _, token = value.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token or len(token) > MAX_BEARER_TOKEN_BYTES:
        return None
    return token


class Authenticator:
    """Turns a request's headers and transport into a :class:`Principal`, or an error."""

    def __init__(self, clients: Sequence[Client]) -> None:
        self.clients = tuple(clients)

    @property
    def open(self) -> bool:
        """No clients configured: anonymous callers on loopback and unix sockets."""
        return not self.clients

    def identify(self, token: bytes) -> Client | None:
        """The client whose token this is. Every digest is compared, match or not."""
        digest = token_digest(token)
        found: Client | None = None
        for client in self.clients:
            if hmac.compare_digest(digest, client.token_digest) and found is None:
                found = client
        return found

    def authenticate(self, scope: Mapping[str, Any]) -> Client | None:
        """Who is asking: a client, or None for an anonymous local caller (only when no
        clients are configured). 401 without a valid token, 403 off loopback when open."""
        if self.open:
            if not is_local_transport(scope):
                raise Forbidden(
                    "no clients are configured: only loopback and unix socket callers are served"
                )
            return None
        authorization = _header(scope.get("headers", []), _AUTHORIZATION)
        if authorization is None:
            raise Unauthenticated("a bearer token is required (Authorization: Bearer ...)")
        token = _bearer_token(authorization)
        client = self.identify(token) if token is not None else None
        if client is None:
            raise Unauthenticated("the bearer token is not valid", invalid_token=True)
        return client

    @staticmethod
    def require_operator(client: Client | None) -> None:
        """403 unless ``client`` is an operator (None, an anonymous caller of open mode, is)."""
        if client is not None and not client.is_operator:
            raise Forbidden(
                f"client {client.name!r} is not an operator: this route concerns every "
                'workspace (an operator has workspaces = ["*"] or operator = true)'
            )

    def acting_workspace(
        self, client: Client | None, scope: Mapping[str, Any], in_path: str | None = None
    ) -> str | None:
        """The workspace named in ``X-Yoi-Workspace`` or, on a workspace-scoped route
        (``/api/w/{workspace_id}/...``), in the path (``in_path``), if the caller may act
        for it. Path and header must agree when both name one.

        A client allowed exactly one workspace acts for it when it names none; a client
        allowed several must name one; ``"*"`` clients and anonymous callers that name none
        act for every workspace at once (None).
        """
        workspace = self._workspace(_header(scope.get("headers", []), _WORKSPACE))
        if in_path is not None:
            if not is_valid_identifier(in_path):
                raise InvalidIdentifier(PATH_WORKSPACE)
            if workspace is not None and workspace != in_path:
                raise WorkspaceMismatch()
            workspace = in_path
        if client is None:
            return workspace
        if workspace is None:
            if client.workspaces is None:
                return None
            if len(client.workspaces) != 1:
                raise Forbidden(
                    f"client {client.name!r} must name its workspace in {WORKSPACE_HEADER}"
                )
            (workspace,) = client.workspaces
        elif not client.may_act_for(workspace):
            raise Forbidden(f"client {client.name!r} may not act for workspace {workspace!r}")
        return workspace

    @staticmethod
    def _workspace(value: bytes | None) -> str | None:
        if value is None:
            return None
        try:
            text = value.decode("ascii").strip()
        except UnicodeDecodeError:
            raise InvalidIdentifier(WORKSPACE_HEADER) from None
        if not is_valid_identifier(text):
            raise InvalidIdentifier(WORKSPACE_HEADER)
        return text
