"""yoi capability tokens (``yoi-cap-v1``): the registry's signing key and the tokens it mints.

A current yoi runtime (contract-v2 section 4.6) trusts a workspace server by its server id
and Ed25519 public key, and accepts, on every request, a short-lived token the server signed
naming the runtime (``aud``), the workspace the caller acts for and the permissions it holds.
The registry is such a server: this module reads its key, mints its tokens and writes a new
identity (``yoi-registryd keygen``). All signing is done by the ``cryptography`` package.

Byte layout, as yoi's ``wr/auth.rs`` has it::

    token  = "yoi-cap-v1." + B64URL(claims JSON) + "." + B64URL(Ed25519 signature)
    signed = ASCII "yoi-cap-v1." + the claims segment exactly as sent
    claims = {"iss", "aud", "workspace_id", "permissions", "exp", "jti"}   (in this order)

B64URL is base64url without padding. Keys are yoi's key strings: the private key is
``yoi-ed25519-pkcs8:v1:`` + B64URL(PKCS#8 DER), the public key ``yoi-ed25519-pub:v1:`` +
B64URL(32 raw bytes).

Tokens and keys are :class:`~yoi_registryd.secrets.Secret` or wrapped so that they print as
``<redacted>``; errors about a key name where it lives (its file, its credential), never
what it holds.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets as random_bytes
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final, NoReturn

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from yoi_registryd.secrets import REDACTED, Secret, credential_path, read_limited

TOKEN_PREFIX: Final = "yoi-cap-v1"
PRIVATE_KEY_PREFIX: Final = "yoi-ed25519-pkcs8:v1:"
PUBLIC_KEY_PREFIX: Final = "yoi-ed25519-pub:v1:"
MAX_TOKEN_TTL: Final = 300
"""Seconds: the longest lifetime the registry gives a token."""
MAX_SIGNING_KEY_FILE_BYTES: Final = 16 * 1024

# The permissions of contract-v2 section 4.1 that a registry's requests need.
WORKERS_LIST: Final = "workers:list"
"""``GET /v1/workers`` and the subscription ``GET /v1/protocol/ws``."""
WORKERS_READ: Final = "workers:read"
"""``GET /v1/workers/{id}``."""
WORKERS_INPUT: Final = "workers:input"
"""``POST /v1/workers/{id}/input``."""
WORKERS_STOP: Final = "workers:stop"
"""``POST /v1/workers/{id}/stop`` and ``/cancel``."""
NO_PERMISSION: Final = ""
"""``GET /v1/runtime``: any valid token, so one with an empty permission list."""

# PKCS#8 v2 (RFC 5958) of an Ed25519 key exactly as yoi writes and reads it (ring's
# ``Ed25519KeyPair::generate_pkcs8`` / ``from_pkcs8``): version 1, the algorithm, the 32-byte
# seed, then the 32-byte public key as ``[1]`` wrapping a BIT STRING. ``cryptography``
# writes and reads only v1 (RFC 5208, no public key), and OpenSSL refuses ring's ``[1]``,
# so this one fixed layout is assembled and recognised here; the key itself is still
# built and checked by ``cryptography`` (the embedded public key must be the seed's).
_V2_HEAD: Final = bytes.fromhex("3053020101300506032b657004220420")
_V2_MIDDLE: Final = bytes.fromhex("a123032100")
_V2_LENGTH: Final = len(_V2_HEAD) + 32 + len(_V2_MIDDLE) + 32


class KeyUnavailable(Exception):
    """The signing key cannot be read or parsed; the message names where it lives only."""


def b64url(data: bytes) -> str:
    """Base64url without padding (yoi's ``URL_SAFE_NO_PAD``)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode canonical unpadded base64url; ``ValueError`` for anything else (padding,
    ``+``/``/``, non-zero trailing bits), as yoi's decoder refuses them."""
    if "=" in text or len(text) % 4 == 1:
        raise ValueError("not canonical unpadded base64url")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not canonical unpadded base64url") from None
    if b64url(data) != text:
        raise ValueError("not canonical unpadded base64url")
    return data


class SigningKey:
    """The registry's Ed25519 private key; prints as ``<redacted>``."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        """A ``yoi-ed25519-pkcs8:v1:`` key string; ``ValueError`` with a fixed reason
        (never the text) when it is not one."""
        text = text.strip()
        if not text.startswith(PRIVATE_KEY_PREFIX):
            raise ValueError(f"it is not a {PRIVATE_KEY_PREFIX} key string")
        try:
            der = b64url_decode(text.removeprefix(PRIVATE_KEY_PREFIX))
        except ValueError:
            raise ValueError("its key material is not base64url") from None
        if len(der) == _V2_LENGTH and der.startswith(_V2_HEAD):
            seed = der[len(_V2_HEAD) : len(_V2_HEAD) + 32]
            middle, public = der[len(_V2_HEAD) + 32 : -32], der[-32:]
            key = Ed25519PrivateKey.from_private_bytes(seed)
            if middle != _V2_MIDDLE or _public_bytes(key) != public:
                raise ValueError("it is not a valid Ed25519 PKCS#8 key")
            return cls(key)
        try:
            loaded = serialization.load_der_private_key(der, password=None)
        except (ValueError, TypeError):
            raise ValueError("it is not a valid Ed25519 PKCS#8 key") from None
        if not isinstance(loaded, Ed25519PrivateKey):
            raise ValueError("it is not an Ed25519 key")
        return cls(loaded)

    def key_string(self) -> Secret:
        """yoi's private key string (PKCS#8 v2, as yoi writes it)."""
        seed = self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        der = _V2_HEAD + seed + _V2_MIDDLE + _public_bytes(self._key)
        return Secret(PRIVATE_KEY_PREFIX + b64url(der))

    def public_key_string(self) -> str:
        """yoi's public key string, for the runtime's ``[[trusted_servers]]``."""
        return PUBLIC_KEY_PREFIX + b64url(_public_bytes(self._key))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SigningKey cannot be pickled")


def _public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_signing_key(
    *,
    key_file: str | None = None,
    key_credential: str | None = None,
    where: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> SigningKey:
    """Read and parse the key from the file, or systemd credential, the config names.

    Raises :class:`KeyUnavailable` saying why, and naming the key as ``where`` (default:
    its file path or credential name); never anything the file holds.
    """
    if key_file is not None:
        path = Path(key_file)
        where = where or f"signing key file {key_file}"
    elif key_credential is not None:
        where = where or f"signing key credential {key_credential!r}"
        env = os.environ if environ is None else environ
        path = credential_path(key_credential, where, env, KeyUnavailable)
    else:
        raise KeyUnavailable("no signing key is configured")
    raw = read_limited(path, where, MAX_SIGNING_KEY_FILE_BYTES, KeyUnavailable)
    try:
        return SigningKey.parse(raw.decode("ascii"))
    except UnicodeDecodeError:
        raise KeyUnavailable(f"{where} is not a yoi key string (not ASCII)") from None
    except ValueError as exc:
        raise KeyUnavailable(f"{where} is not usable: {exc}") from None


def write_key_file(path: Path, key: SigningKey) -> None:
    """Write ``key`` to a new file readable by its owner only (mode 0600).

    The file is created exclusively with that mode (never a wider one, even for a
    moment); an existing file is left alone (``FileExistsError``).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, (key.key_string().reveal() + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)


class CapabilityClaims(msgspec.Struct, frozen=True):
    """The claims of a token, in yoi's field order. All required; ``exp`` in Unix seconds."""

    iss: str
    aud: str
    workspace_id: str
    permissions: list[str]
    exp: int
    jti: str


_CLAIMS_ENCODER: Final = msgspec.json.Encoder()
_SIGNING_PREFIX: Final = (TOKEN_PREFIX + ".").encode("ascii")


def new_token_id() -> str:
    """A fresh ``jti``: 16 random bytes, base64url (as yoi's backend)."""
    return b64url(random_bytes.token_bytes(16))


def sign_token(key: SigningKey, claims: CapabilityClaims) -> Secret:
    """The ``yoi-cap-v1`` token carrying ``claims``, signed with ``key``."""
    payload = b64url(_CLAIMS_ENCODER.encode(claims)).encode("ascii")
    signature = key.sign(_SIGNING_PREFIX + payload)
    return Secret(f"{TOKEN_PREFIX}.{payload.decode('ascii')}.{b64url(signature)}")


class TokenMinter:
    """Mints the tokens one remote source sends to its runtime.

    Each token names this runtime (``aud`` = the configured ``runtime_id``), the configured
    workspace, and only the one permission its request needs; it lives ``ttl`` seconds
    (at most 300) and has its own random ``jti``.

    Minting costs an Ed25519 signature (about 50-80 us here), so a token is reused for
    requests needing the same permission while it is younger than ``reuse`` seconds, at
    most half its lifetime: every token sent still has at least half its lifetime left,
    room for a runtime whose clock runs ahead of ours (yoi checks ``exp`` with no leeway).
    A runtime does not check ``jti`` (contract-v2 section 4.6): it is fresh per token, not
    per request. ``reuse = 0`` mints a token for every request, as yoi's own backend does.
    """

    def __init__(
        self,
        key: SigningKey,
        *,
        server_id: str,
        runtime_id: str,
        workspace_id: str,
        ttl: float = MAX_TOKEN_TTL,
        reuse: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < ttl <= MAX_TOKEN_TTL:
            raise ValueError(f"a token lives 1 to {MAX_TOKEN_TTL} seconds")
        self._key = key
        self._server_id = server_id
        self._runtime_id = runtime_id
        self._workspace_id = workspace_id
        self._ttl = int(ttl)
        self._reuse = max(0.0, min(reuse, ttl / 2))
        self._clock = clock
        self._cache: dict[str, tuple[float, Secret]] = {}
        """Per permission: when the token was minted, and the token."""

    def token(self, permission: str) -> Secret:
        """A token for one request that needs ``permission`` (``NO_PERMISSION``: none)."""
        now = self._clock()
        cached = self._cache.get(permission)
        if cached is not None and 0 <= now - cached[0] < self._reuse:
            return cached[1]
        token = self.mint((permission,) if permission else (), now)
        if self._reuse > 0:
            self._cache[permission] = (now, token)
        return token

    def mint(self, permissions: tuple[str, ...], now: float | None = None) -> Secret:
        """A new token with exactly ``permissions``, bypassing the cache."""
        issued = self._clock() if now is None else now
        claims = CapabilityClaims(
            iss=self._server_id,
            aud=self._runtime_id,
            workspace_id=self._workspace_id,
            permissions=list(permissions),
            exp=int(issued) + self._ttl,
            jti=new_token_id(),
        )
        return sign_token(self._key, claims)
