"""Capability tokens: the registry's keys and minted tokens against a runtime's verification.

The verifier is the fake runtime's (``tests/fake_runtime_auth.py``), written from the
specification apart from the minting code, so acceptance here means the token has yoi's
byte layout, not merely that the registry agrees with itself.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.fake_runtime import capability_source_toml, registry_identity
from tests.fake_runtime_auth import AuthRefusal, RuntimeAuth, parse_public_key
from yoi_registryd.capability import (
    MAX_TOKEN_TTL,
    NO_PERMISSION,
    PRIVATE_KEY_PREFIX,
    PUBLIC_KEY_PREFIX,
    WORKERS_LIST,
    WORKERS_STOP,
    KeyUnavailable,
    SigningKey,
    TokenMinter,
    b64url_decode,
    load_signing_key,
    write_key_file,
)
from yoi_registryd.config import RemoteSourceConfig, parse_config
from yoi_registryd.sources.remote_auth import RemoteCredentials

SERVER = "registry-1"
RUNTIME = "gpu-1"
WORKSPACE = "0192f0e8-4d84-7d6e-a000-000000000001"
NOW = 1_790_000_000.0


def minter(key: SigningKey, clock: list[float] | None = None, **kwargs: object) -> TokenMinter:
    times = clock if clock is not None else [NOW]
    return TokenMinter(
        key,
        server_id=SERVER,
        runtime_id=RUNTIME,
        workspace_id=WORKSPACE,
        clock=lambda: times[0],
        **kwargs,  # type: ignore[arg-type]
    )


def runtime_auth(key: SigningKey, now: float = NOW, identity: str = RUNTIME) -> RuntimeAuth:
    return RuntimeAuth(identity, {SERVER: key.public_key_string()}, now=lambda: now)


def claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(payload + "==="))
    return decoded


def header(token: object) -> bytes:
    return f"Bearer {token}".encode()


def reveal_header(minted: TokenMinter, permission: str) -> bytes:
    return header(minted.token(permission).reveal())


def test_a_minted_token_is_accepted_with_exactly_the_claims_of_its_request() -> None:
    key = SigningKey.generate()
    token = minter(key).token(WORKERS_LIST).reveal()
    prefix, payload, signature = token.split(".")
    assert prefix == "yoi-cap-v1"
    # Canonical unpadded base64url segments, claims in yoi's order.
    assert b64url_decode(payload) and len(b64url_decode(signature)) == 64
    body = claims(token)
    assert list(body) == ["iss", "aud", "workspace_id", "permissions", "exp", "jti"]
    assert body["iss"] == SERVER and body["aud"] == RUNTIME
    assert body["workspace_id"] == WORKSPACE
    assert body["permissions"] == [WORKERS_LIST]
    assert body["exp"] == int(NOW) + MAX_TOKEN_TTL
    assert len(b64url_decode(str(body["jti"]))) == 16

    context = runtime_auth(key).authenticate(header(token), WORKERS_LIST)
    assert context.workspace_id == WORKSPACE and context.server_id == SERVER
    # GET /v1/runtime needs no permission: its token carries none.
    bare = minter(key).token(NO_PERMISSION).reveal()
    assert claims(bare)["permissions"] == []
    runtime_auth(key).authenticate(header(bare), None)


@pytest.mark.parametrize(
    ("case", "status", "code", "reason"),
    [
        ("wrong runtime", 401, "unauthorized", "audience"),
        ("expired", 401, "unauthorized", "expired"),
        ("wrong key", 401, "unauthorized", "signature"),
        ("missing permission", 403, "forbidden", "workers:stop"),
        ("unknown server", 401, "unauthorized", "issuer"),
        ("tampered claims", 401, "unauthorized", "signature"),
    ],
)
def test_a_runtime_refuses_a_token_that_does_not_hold(
    case: str, status: int, code: str, reason: str
) -> None:
    key = SigningKey.generate()
    auth = runtime_auth(key)
    permission = WORKERS_STOP if case == "missing permission" else WORKERS_LIST
    token = minter(key).token(WORKERS_LIST).reveal()
    if case == "wrong runtime":
        auth = runtime_auth(key, identity="gpu-2")
    elif case == "expired":
        auth = runtime_auth(key, now=NOW + MAX_TOKEN_TTL + 1)
    elif case == "wrong key":
        token = minter(SigningKey.generate()).token(WORKERS_LIST).reveal()
    elif case == "unknown server":
        auth = RuntimeAuth(RUNTIME, {"another": key.public_key_string()}, now=lambda: NOW)
    elif case == "tampered claims":
        prefix, _, signature = token.split(".")
        forged = dict(claims(token), workspace_id="other")
        payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
        token = f"{prefix}.{payload}.{signature}"
    with pytest.raises(AuthRefusal) as refused:
        auth.authenticate(header(token), permission)
    assert (refused.value.status, refused.value.code) == (status, code)
    assert reason in refused.value.message
    # Valid until exp inclusive, refused one second after (no leeway at the runtime).
    runtime_auth(key, now=NOW + MAX_TOKEN_TTL).authenticate(
        reveal_header(minter(key), WORKERS_LIST), WORKERS_LIST
    )


def test_tokens_are_reused_only_well_inside_their_lifetime_and_each_has_its_own_jti() -> None:
    key = SigningKey.generate()
    clock = [NOW]
    minted = minter(key, clock, ttl=300, reuse=60)
    first = minted.token(WORKERS_LIST)
    assert minted.token(WORKERS_LIST) is first  # reused within the window
    other = minted.token(WORKERS_STOP)
    assert claims(other.reveal())["permissions"] == [WORKERS_STOP]
    clock[0] = NOW + 60
    renewed = minted.token(WORKERS_LIST)
    assert renewed.reveal() != first.reveal()
    assert claims(renewed.reveal())["jti"] != claims(first.reveal())["jti"]
    # Every token sent keeps at least half its lifetime: reuse is capped at ttl / 2.
    capped = minter(key, clock, ttl=100, reuse=90)
    token = capped.token(WORKERS_LIST)
    clock[0] += 50
    assert capped.token(WORKERS_LIST).reveal() != token.reveal()
    # reuse = 0: a new token (and jti) for every request, as yoi's own backend does.
    fresh = minter(key, clock, reuse=0)
    jtis = {claims(fresh.token(WORKERS_LIST).reveal())["jti"] for _ in range(20)}
    assert len(jtis) == 20
    with pytest.raises(ValueError):
        minter(key, ttl=MAX_TOKEN_TTL + 1)


def test_key_strings_are_yois_and_never_print() -> None:
    key = SigningKey.generate()
    text = key.key_string().reveal()
    assert text.startswith(PRIVATE_KEY_PREFIX)
    der = b64url_decode(text.removeprefix(PRIVATE_KEY_PREFIX))
    # PKCS#8 v2 as yoi (ring) writes it: version 1, then the seed, then the public key.
    assert len(der) == 85 and der[:5] == bytes.fromhex("3053020101")
    public = key.public_key_string()
    assert public.startswith(PUBLIC_KEY_PREFIX)
    assert der[-32:] == b64url_decode(public.removeprefix(PUBLIC_KEY_PREFIX))
    parse_public_key(public)  # the runtime reads it
    again = SigningKey.parse(text + "\n")
    assert again.public_key_string() == public
    for shown in (repr(key), str(key), f"{key}", repr(key.key_string())):
        assert text not in shown and "redacted" in shown
    # A PKCS#8 v1 key written by other tools (OpenSSL, cryptography) is read too.
    other = Ed25519PrivateKey.generate()
    v1 = other.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    v1_text = PRIVATE_KEY_PREFIX + base64.urlsafe_b64encode(v1).rstrip(b"=").decode()
    assert SigningKey.parse(v1_text).public_key_string() != public


def test_a_key_that_cannot_be_read_or_parsed_is_named_never_echoed(tmp_path: Path) -> None:
    key = SigningKey.generate()
    good = key.key_string().reveal()
    seed_canary = good[len(PRIVATE_KEY_PREFIX) + 20 :]
    body = good.removeprefix(PRIVATE_KEY_PREFIX)
    wrong_public = b64url_decode(body)[:-1] + bytes([b64url_decode(body)[-1] ^ 1])
    cases = {
        "missing": None,
        "empty": "",
        "not-a-key-string": seed_canary,
        "bad-base64": PRIVATE_KEY_PREFIX + body + "=",
        "not-pkcs8": PRIVATE_KEY_PREFIX + body[:40],
        "public-mismatch": PRIVATE_KEY_PREFIX
        + base64.urlsafe_b64encode(wrong_public).rstrip(b"=").decode(),
        "binary": b"\xff\xfe" + seed_canary.encode(),
    }
    for name, content in cases.items():
        path = tmp_path / f"{name}.key"
        if isinstance(content, str):
            path.write_text(content)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        with pytest.raises(KeyUnavailable) as failed:
            load_signing_key(key_file=str(path))
        message = str(failed.value)
        assert str(path) in message, (name, message)
        assert seed_canary not in message and body[:16] not in message, name
    with pytest.raises(KeyUnavailable, match=r"'registry-key'.*CREDENTIALS_DIRECTORY"):
        load_signing_key(key_credential="registry-key", environ={})
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "registry-key").write_text(good)
    loaded = load_signing_key(
        key_credential="registry-key", environ={"CREDENTIALS_DIRECTORY": str(credentials)}
    )
    assert loaded.public_key_string() == key.public_key_string()


def test_write_key_file_creates_0600_and_never_replaces(tmp_path: Path) -> None:
    path = tmp_path / "registry.key"
    old = os.umask(0)
    try:
        write_key_file(path, SigningKey.generate())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        write_key_file(path, SigningKey.generate())
    assert path.read_bytes() == before


def test_keygen_command_writes_the_key_and_prints_the_public_key(tmp_path: Path) -> None:
    path = tmp_path / "registry.key"
    command = [sys.executable, "-m", "yoi_registryd", "keygen", str(path), "--server-id", SERVER]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    public = done.stdout.strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_signing_key(key_file=str(path))
    assert public == key.public_key_string()
    assert f'server_id = "{SERVER}"' in done.stderr and public in done.stderr
    private = key.key_string().reveal()
    assert private not in done.stdout and private not in done.stderr
    # The key signs tokens a runtime trusting the printed public key accepts.
    auth = RuntimeAuth(RUNTIME, {SERVER: public}, now=lambda: NOW)
    auth.authenticate(reveal_header(minter(key), WORKERS_LIST), WORKERS_LIST)

    again = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert load_signing_key(key_file=str(path)).public_key_string() == public


async def test_the_header_value_is_the_same_object_while_its_token_is_reused(
    tmp_path: Path,
) -> None:
    """So that a request built once can be sent again until the token changes."""
    _, key_path = registry_identity(tmp_path)
    (source,) = parse_config(
        capability_source_toml(RUNTIME, "http://127.0.0.1:9", key_path, token_reuse="0s")
    ).sources
    assert isinstance(source, RemoteSourceConfig)
    fresh = RemoteCredentials(source)
    await fresh.load()
    first = fresh.authorization(WORKERS_LIST)
    assert first is not None and fresh.authorization(WORKERS_LIST) is not first
    reused = RemoteCredentials(msgspec.structs.replace(source, token_reuse=source.token_ttl / 2))
    await reused.load()
    header = reused.authorization(WORKERS_LIST)
    assert header is not None and reused.authorization(WORKERS_LIST) is header
    assert header.reveal().startswith("Bearer yoi-cap-v1.")
    assert reused.authorization(WORKERS_STOP) is not header
    assert str(header) == "<redacted>"
