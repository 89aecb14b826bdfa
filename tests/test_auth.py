"""Caller identity over real HTTP: bearer tokens per client (by digest, file, environment
or systemd credential), the acting workspace, the open loopback-only mode, request ids."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import StartDaemon
from yoi_registryd.auth import Authenticator, Client, is_local_transport, load_clients
from yoi_registryd.config import ConfigError, parse_config
from yoi_registryd.daemon import Daemon, open_listener

HEX32 = re.compile(r"[0-9a-f]{32}")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def clients_toml(tmp_path: Path, **tokens: str) -> str:
    """``sources = []`` plus clients: ``hashed`` (alpha only), ``filed`` (alpha, beta),
    ``credentialed`` (any workspace); the audit file goes to ``tmp_path``."""
    token_file = tmp_path / "filed.token"
    token_file.write_text(tokens["filed"] + "\n")
    return f"""
sources = []
[[clients]]
name = "hashed"
token_sha256 = "{digest(tokens["hashed"]).upper()}"
workspaces = ["alpha"]
[[clients]]
name = "filed"
token_file = "{token_file}"
workspaces = ["alpha", "beta"]
[[clients]]
name = "credentialed"
token_credential = "ops-token"
workspaces = ["*"]
[audit]
path = "{tmp_path / "audit.jsonl"}"
"""


@pytest.fixture
def tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    made = {name: secrets.token_urlsafe(32) for name in ("hashed", "filed", "credentialed")}
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "ops-token").write_text(made["credentialed"])
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    return made


def bearer(token: str, workspace: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if workspace is not None:
        headers["X-Yoi-Workspace"] = workspace
    return headers


async def test_every_token_source_authenticates_its_client(
    start_daemon: StartDaemon, tmp_path: Path, tokens: dict[str, str]
) -> None:
    d = await start_daemon(clients_toml(tmp_path, **tokens))
    for name, workspace, acting in (
        ("hashed", None, "alpha"),  # one workspace: it is the default
        ("filed", "beta", "beta"),
        ("credentialed", None, ""),  # "*" naming none: every workspace (no one workspace)
        ("credentialed", "zeta", "zeta"),
    ):
        body = await d.get_json("/api/workers", headers=bearer(tokens[name], workspace))
        assert body["workspace_id"] == acting, name


async def test_missing_and_wrong_tokens_are_401(
    start_daemon: StartDaemon, tmp_path: Path, tokens: dict[str, str]
) -> None:
    d = await start_daemon(clients_toml(tmp_path, **tokens))
    missing = await d.client.get("/api/workers")
    assert missing.status_code == 401
    assert missing.json()["code"] == "unauthenticated"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    for headers in (
        bearer(tokens["hashed"] + "x"),
        bearer(tokens["hashed"][:-1]),
        bearer(secrets.token_urlsafe(32)),
        {"Authorization": f"Basic {tokens['hashed']}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer " + "a" * 5000},
        # the token's digest is not the token
        bearer(digest(tokens["hashed"])),
    ):
        wrong = await d.client.get("/api/runtimes", headers=headers)
        assert wrong.status_code == 401, headers
        assert wrong.json()["code"] == "unauthenticated"
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    # Authentication comes first: an unknown route or a bad id is still 401 without a token.
    # (The status page itself loads, without data: test_operator_endpoints.py.)
    for path in ("/api/nope", "/api/runtimes/bad.id", "/api/sources", "/metrics"):
        assert (await d.client.get(path)).status_code == 401, path


async def test_workspace_must_be_one_the_client_may_act_for(
    start_daemon: StartDaemon, tmp_path: Path, tokens: dict[str, str]
) -> None:
    d = await start_daemon(clients_toml(tmp_path, **tokens))
    cases = [
        (bearer(tokens["hashed"], "beta"), 403, "forbidden"),
        (bearer(tokens["filed"], "gamma"), 403, "forbidden"),
        (bearer(tokens["filed"]), 403, "forbidden"),  # several allowed: must name one
        (bearer(tokens["filed"], "../etc"), 400, "invalid_identifier"),
        (bearer(tokens["filed"], ""), 400, "invalid_identifier"),
        ({**bearer(tokens["filed"]), "X-Yoi-Workspace": "alpha, beta"}, 400, "invalid_identifier"),
    ]
    for headers, status, code in cases:
        response = await d.client.get("/api/workers", headers=headers)
        assert response.status_code == status, headers
        assert response.json()["code"] == code
    # A header repeated is two values, never the first one silently.
    twice = [
        ("Authorization", f"Bearer {tokens['filed']}"),
        ("X-Yoi-Workspace", "alpha"),
        ("X-Yoi-Workspace", "beta"),
    ]
    assert (await d.client.get("/api/workers", headers=twice)).status_code == 400
    ok = await d.client.get("/api/workers", headers=bearer(tokens["filed"], "alpha"))
    assert ok.status_code == 200


async def test_probes_need_no_token(
    start_daemon: StartDaemon, tmp_path: Path, tokens: dict[str, str]
) -> None:
    d = await start_daemon(clients_toml(tmp_path, **tokens))
    for path in ("/healthz", "/livez", "/readyz"):
        response = await d.client.get(path)
        assert response.status_code in (200, 503), path
        assert HEX32.fullmatch(response.headers["x-request-id"])
    # /metrics needs an operator's token (test_operator_endpoints.py); refused, it still
    # carries a request id.
    response = await d.client.get("/metrics")
    assert response.status_code == 401
    assert HEX32.fullmatch(response.headers["x-request-id"])


def test_client_tokens_that_cannot_be_read_stop_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("YOI_TEST_UNSET", raising=False)
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    config = parse_config(
        f"""
sources = []
[[clients]]
name = "a"
token_file = "{tmp_path / "missing.token"}"
workspaces = ["*"]
[[clients]]
name = "b"
token_credential = "b-token"
workspaces = ["*"]
[[clients]]
name = "c"
token_env = "YOI_TEST_UNSET"
workspaces = ["*"]
[[clients]]
name = "d"
token_file = "{empty}"
workspaces = ["*"]
[audit]
path = "{tmp_path / "audit.jsonl"}"
"""
    )
    with pytest.raises(ConfigError) as caught:
        Daemon(config)
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "clients[0]",
        "clients[1]",
        "clients[2]",
        "clients[3]",
    ]
    assert "does not exist" in problems[0]
    assert "CREDENTIALS_DIRECTORY" in problems[1]
    assert "is empty" in problems[3]


def test_two_clients_with_one_token_are_refused(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(16)
    token_file = tmp_path / "t"
    token_file.write_text(token)
    config = parse_config(
        f"""
[[clients]]
name = "a"
token_sha256 = "{digest(token)}"
workspaces = ["*"]
[[clients]]
name = "b"
token_file = "{token_file}"
workspaces = ["*"]
"""
    )
    with pytest.raises(ConfigError) as caught:
        load_clients(config.clients)
    assert caught.value.problems == ["clients[1]: has the same token as client 'a'"]
    assert token not in str(caught.value)


@pytest.mark.parametrize(
    ("client", "problem"),
    [
        ('name = "a"\nworkspaces = ["*"]', "clients[0]: give exactly one of token_sha256"),
        (
            f'name = "a"\ntoken_sha256 = "{"0" * 64}"\ntoken_env = "X"\nworkspaces = ["*"]',
            "clients[0]: give exactly one of token_sha256",
        ),
        (
            'name = "a"\ntoken_sha256 = "abc"\nworkspaces = ["*"]',
            "clients[0].token_sha256: expected 64 hexadecimal characters",
        ),
        (
            'name = "a"\ntoken_file = "rel/path"\nworkspaces = ["*"]',
            "clients[0].token_file: must be an absolute path",
        ),
        (
            'name = "a"\ntoken_credential = "../x"\nworkspaces = ["*"]',
            "clients[0].token_credential: must be a credential name",
        ),
        (
            f'name = "a b"\ntoken_sha256 = "{"0" * 64}"\nworkspaces = ["*"]',
            "clients[0].name: 'a b' is not a valid name",
        ),
        (
            f'name = "a"\ntoken_sha256 = "{"0" * 64}"\nworkspaces = []',
            "clients[0].workspaces: name at least one workspace id",
        ),
        (
            f'name = "a"\ntoken_sha256 = "{"0" * 64}"\nworkspaces = ["*", "alpha"]',
            'clients[0].workspaces: "*" already means every workspace',
        ),
        (
            f'name = "a"\ntoken_sha256 = "{"0" * 64}"\nworkspaces = ["a/b"]',
            "clients[0].workspaces[0]: 'a/b' is not a valid workspace id",
        ),
    ],
)
def test_client_config_problems_name_the_key(client: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[[clients]]\n{client}\n")
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_every_client_digest_is_compared_whichever_matches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No early exit: a hit on the first client costs the same comparisons as a miss."""
    tokens = [secrets.token_bytes(16) for _ in range(5)]
    auth = Authenticator(
        [Client(f"c{i}", hashlib.sha256(t).digest(), None) for i, t in enumerate(tokens)]
    )
    calls: list[int] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr("yoi_registryd.auth.hmac.compare_digest", counting)
    for i, token in enumerate(tokens):
        calls.clear()
        found = auth.identify(token)
        assert found is not None and found.name == f"c{i}"
        assert len(calls) == len(tokens)
    calls.clear()
    assert auth.identify(b"not a token") is None
    assert len(calls) == len(tokens)


@pytest.mark.parametrize(
    ("scope", "local"),
    [
        ({"client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80)}, True),
        ({"client": ("127.8.9.10", 5000), "server": ("127.0.0.1", 80)}, True),
        ({"client": ("::1", 5000), "server": ("::1", 80)}, True),
        ({"client": ("::ffff:127.0.0.1", 5000), "server": ("::1", 80)}, True),
        ({"client": None, "server": None}, True),  # a unix socket
        ({"client": ("10.1.2.3", 5000), "server": ("10.1.2.1", 80)}, False),
        ({"client": ("::ffff:10.1.2.3", 5000), "server": ("::", 80)}, False),
        ({"client": ("fe80::1%eth0", 5000), "server": ("::", 80)}, False),
        ({"client": ("not-an-address", 1), "server": None}, False),
        ({"client": None, "server": ("10.1.2.1", 80)}, False),
    ],
)
def test_local_transport(scope: dict[str, Any], local: bool) -> None:
    assert is_local_transport(scope) is local


# -- the open mode: no clients configured ----------------------------------------------------


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_open_mode_serves_loopback_and_says_so(
    start_daemon: StartDaemon, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "yoi_registryd.daemon")
    d = await start_daemon(f'sources = []\n[audit]\npath = "{tmp_path / "a.jsonl"}"\n')
    assert (await d.client.get("/api/workers")).status_code == 200
    assert any("no [[clients]] configured" in r.getMessage() for r in caplog.records)
    # A workspace may still be named: the lists are filtered for it.
    body = await d.get_json("/api/workers", headers={"X-Yoi-Workspace": "alpha"})
    assert body["workspace_id"] == "alpha"


async def test_open_mode_refuses_callers_off_loopback(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call from")
    config = parse_config(f'sources = []\n[audit]\npath = "{tmp_path / "a.jsonl"}"\n')
    sock = open_listener(f"{address}:0")
    port = sock.getsockname()[1]
    daemon = Daemon(config)
    await nursery.start(daemon.run, [sock])
    try:
        async with httpx.AsyncClient(base_url=f"http://{address}:{port}") as client:
            response = await client.get("/api/workers")
            assert response.status_code == 403
            assert response.json()["code"] == "forbidden"
            assert (await client.get("/healthz")).status_code == 200
    finally:
        daemon.shutdown.set()


async def test_open_mode_serves_a_unix_socket(nursery: trio.Nursery, tmp_path: Path) -> None:
    config = parse_config(f'sources = []\n[audit]\npath = "{tmp_path / "a.jsonl"}"\n')
    path = tmp_path / "registry.sock"
    daemon = Daemon(config)
    await nursery.start(daemon.run, [open_listener(f"unix:{path}")])
    try:
        transport = httpx.AsyncHTTPTransport(uds=str(path))
        async with httpx.AsyncClient(transport=transport, base_url="http://registry") as client:
            response = await client.get("/api/workers")
            assert response.status_code == 200
    finally:
        daemon.shutdown.set()


async def test_a_configured_daemon_logs_that_tokens_are_needed(
    start_daemon: StartDaemon,
    tmp_path: Path,
    tokens: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "yoi_registryd.daemon")
    await start_daemon(clients_toml(tmp_path, **tokens))
    messages = [r.getMessage() for r in caplog.records]
    assert "3 clients configured: requests need a bearer token" in messages
    assert not any("no [[clients]]" in m for m in messages)
    assert not any(t in m for m in messages for t in tokens.values())


# -- request ids ---------------------------------------------------------------------------


async def test_request_ids_are_kept_when_sane_and_made_otherwise(
    start_daemon: StartDaemon, tmp_path: Path, tokens: dict[str, str]
) -> None:
    d = await start_daemon(clients_toml(tmp_path, **tokens))
    ok = bearer(tokens["hashed"])
    for sent, kept in (
        ("req-1", True),
        ("abc.DEF_123:x-y", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ("slash/inside", False),
        ("", False),
        ("caf\u00e9", False),
    ):
        headers: dict[str, Any] = {**ok, "X-Request-Id": sent.encode("utf-8")}
        response = await d.client.get("/api/workers", headers=headers)
        echoed = response.headers["x-request-id"]
        if kept:
            assert echoed == sent
        else:
            assert HEX32.fullmatch(echoed), (sent, echoed)
    # Every kind of response carries one: refused, not found, rejected by the path guard.
    for path, headers in (
        ("/api/workers", {}),
        ("/api/nope", ok),
        ("/api/runtimes/a%2Fb", ok),
        ("/livez", {}),
    ):
        response = await d.client.get(path, headers=headers)
        assert HEX32.fullmatch(response.headers["x-request-id"]), path
    # Fresh ids are unique.
    ids = set()
    for _ in range(20):
        ids.add((await d.client.get("/api/workers", headers=ok)).headers["x-request-id"])
    assert len(ids) == 20
