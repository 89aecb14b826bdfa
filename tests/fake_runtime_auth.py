"""The fake runtime's authentication, as a current yoi runtime does it (contract-v2 section 4.6).

Written from the specification, apart from the registry's own minting code
(``yoi_registryd.capability``), so that a test where the fake accepts a registry token
checks the registry against the protocol rather than against itself. Signatures are verified
with the ``cryptography`` package.

Two modes, as a runtime has them: capability tokens (``yoi-cap-v1``, when the runtime has
trusted servers; a local token is then ignored), or a static local token that scopes the
caller to workspace ``local``. The checks run in yoi's order: format, base64, claims JSON,
issuer, key, signature, audience, expiry, workspace, permission.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

LOCAL_WORKSPACE: Final = "local"
LOCAL_SERVER_ID: Final = "local-token"
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class AuthContext:
    """Who a request acts for, once authenticated."""

    server_id: str
    workspace_id: str
    permissions: tuple[str, ...]
    token_id: str | None = None


@dataclass(frozen=True)
class AuthRefusal(Exception):
    """An authentication failure: the status, yoi's error code and message."""

    status: int
    code: str
    message: str


_CLAIM_TYPES: Final = {
    "iss": str,
    "aud": str,
    "workspace_id": str,
    "permissions": list,
    "exp": int,
    "jti": str,
}
"""Every claim is required, with this JSON type (serde's ``CapabilityClaims``)."""


def _claims(payload: bytes) -> dict[str, Any]:
    """The claims object; ``ValueError`` when a claim is missing or of the wrong type."""
    claims = msgspec.json.decode(payload)
    if not isinstance(claims, dict):
        raise ValueError("claims are not an object")
    for name, kind in _CLAIM_TYPES.items():
        value = claims.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"claim {name} is missing or not a {kind.__name__}")
    if not all(isinstance(p, str) for p in claims["permissions"]) or claims["exp"] < 0:
        raise ValueError("bad permissions or exp")
    return claims


def _unb64url(text: str) -> bytes:
    """Strict unpadded base64url: the alphabet only, and the canonical encoding only."""
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not base64url")
    padded = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
    try:
        data = binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error:
        raise ValueError("not base64url") from None
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode() != text:
        raise ValueError("non-canonical base64url")
    return data


def _invalid(reason: str) -> AuthRefusal:
    return AuthRefusal(401, "unauthorized", f"invalid Runtime capability token: {reason}")


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A ``yoi-ed25519-pub:v1:`` key string."""
    prefix = "yoi-ed25519-pub:v1:"
    if not text.startswith(prefix):
        raise ValueError("invalid Ed25519 public key format")
    raw = _unb64url(text.removeprefix(prefix))
    if len(raw) != 32:
        raise ValueError("invalid Ed25519 public key format")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass
class RuntimeAuth:
    """A runtime's auth configuration: its identity, trusted servers, or a local token."""

    identity_id: str
    trusted_servers: dict[str, str]
    """``server_id`` -> public key string (the runtime's ``[[trusted_servers]]``)."""
    local_token: str | None = None
    now: Any = time.time
    """The clock (Unix seconds); tests replace it to see expiry."""

    @property
    def capability_mode(self) -> bool:
        return bool(self.trusted_servers)

    def authenticate(self, authorization: bytes | None, permission: str | None) -> AuthContext:
        """Check an ``Authorization`` header for a route needing ``permission`` (None: any
        valid credential); raises :class:`AuthRefusal`."""
        value = authorization.decode("latin-1") if authorization is not None else ""
        if not value.startswith("Bearer "):
            if self.capability_mode:
                raise AuthRefusal(401, "unauthorized", "missing Runtime capability bearer token")
            raise AuthRefusal(401, "unauthorized", "missing or invalid local Runtime bearer token")
        credential = value.removeprefix("Bearer ")
        if not self.capability_mode:
            if self.local_token is None or credential != self.local_token:
                raise AuthRefusal(
                    401, "unauthorized", "missing or invalid local Runtime bearer token"
                )
            return AuthContext(LOCAL_SERVER_ID, LOCAL_WORKSPACE, ())
        return self._verify(credential, permission)

    def _verify(self, token: str, permission: str | None) -> AuthContext:
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "yoi-cap-v1" or not parts[1] or not parts[2]:
            raise _invalid("invalid capability token format")
        try:
            payload = _unb64url(parts[1])
            signature = _unb64url(parts[2])
        except ValueError:
            raise _invalid("invalid base64url key material") from None
        try:
            claims = _claims(payload)
        except (msgspec.DecodeError, ValueError):
            raise _invalid("malformed capability token claims") from None
        issuer, audience, workspace = claims["iss"], claims["aud"], claims["workspace_id"]
        public = self.trusted_servers.get(issuer)
        if public is None:
            raise _invalid(f"unknown token issuer `{issuer}`")
        try:
            key = parse_public_key(public)
        except ValueError:
            raise _invalid("invalid Ed25519 public key format") from None
        try:
            key.verify(signature, b"yoi-cap-v1." + parts[1].encode("ascii"))
        except InvalidSignature:
            raise _invalid("invalid token signature") from None
        if audience != self.identity_id:
            raise _invalid(
                f"token audience `{audience}` does not match runtime `{self.identity_id}`"
            )
        if claims["exp"] < int(self.now()):
            raise _invalid("capability token is expired")
        if not workspace.strip():
            raise AuthRefusal(
                403, "workspace_scope_required", "capability token is missing workspace scope"
            )
        if permission is not None and permission not in claims["permissions"]:
            raise AuthRefusal(
                403,
                "forbidden",
                f"capability token is missing required permission `{permission}`",
            )
        if not issuer.strip():
            raise AuthRefusal(403, "server_scope_required", "capability token has no server id")
        return AuthContext(issuer, workspace, tuple(claims["permissions"]), claims["jti"])
