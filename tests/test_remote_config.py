"""Remote source configuration: keys, validation, redaction, and bearer-token loading.

Every problem names its key and never repeats a URL or a token; tokens come only from a
file, an environment variable or a systemd credential, read from real files here.
"""

from __future__ import annotations

import logging
import pickle
from datetime import timedelta
from pathlib import Path

import pytest

from yoi_registryd.config import ConfigError, RemoteSourceConfig, parse_config
from yoi_registryd.secrets import Secret, TokenUnavailable, load_token
from yoi_registryd.sources.factory import source_spec

URL_CANARY = "http://canary-host-93b1.invalid:8080/canary-prefix"
TOKEN_CANARY = "canary-token-61fe"


def remote(extra: str = "", base_url: str = URL_CANARY) -> str:
    return (
        "[[sources]]\n"
        'kind = "remote"\n'
        'runtime_id = "remote:gpu-1"\n'
        f'base_url = "{base_url}"\n'
        f"{extra}"
    )


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    for problem in info.value.problems:
        assert "canary" not in problem, problem
    assert "canary" not in str(info.value)
    return info.value.problems


def test_minimal_remote_source_and_its_defaults() -> None:
    config = parse_config(remote('token_file = "/etc/yoi/remote.token"\n'))
    (src,) = config.sources
    assert isinstance(src, RemoteSourceConfig)
    assert src.runtime_id == "remote:gpu-1"
    assert src.base_url.reveal() == URL_CANARY
    assert src.poll_interval == timedelta(seconds=2)
    assert src.timeout == timedelta(seconds=5)
    assert src.stale_after == timedelta(seconds=30)
    assert src.expire_after == timedelta(minutes=10)
    assert src.max_response_bytes == 8 * 1024 * 1024
    assert src.workspaces == ()
    spec = source_spec(src)
    assert (spec.source_kind, spec.label) == ("remote_http", "remote:gpu-1")
    assert (spec.stale_after, spec.expire_after) == (src.stale_after, src.expire_after)
    # Structural redaction: the config object never prints its URL.
    for text in (repr(src), str(src), repr(config), f"{src.base_url}", str(src.base_url)):
        assert "canary" not in text
        assert "<redacted>" in text


def test_all_keys_parse() -> None:
    config = parse_config(
        remote(
            'label = "GPU box"\n'
            'token_env = "YOI_REMOTE_TOKEN"\n'
            'workspaces = ["ws-1", "ws:2"]\n'
            'poll_interval = "1s"\n'
            "poll_jitter = 0.2\n"
            'timeout = "3s"\n'
            'backoff_max = "20s"\n'
            'stale_after = "10s"\n'
            'expire_after = "1h"\n'
            "max_response_bytes = 65536\n"
        )
    )
    (src,) = config.sources
    assert isinstance(src, RemoteSourceConfig)
    assert (src.label, src.token_env, src.workspaces) == (
        "GPU box",
        "YOI_REMOTE_TOKEN",
        ("ws-1", "ws:2"),
    )
    assert src.expire_after == timedelta(hours=1)
    assert source_spec(src).label == "GPU box"


def test_an_inline_token_is_refused_without_echoing_it() -> None:
    found = problems(remote(f'token = "{TOKEN_CANARY}"\n'))
    assert found == [
        "sources[0].token: tokens are never written inline; "
        "use token_file, token_env or token_credential"
    ]


@pytest.mark.parametrize(
    ("extra", "base_url", "expected"),
    [
        ("", "ftp://canary-host/x", "sources[0].base_url: expected http://host:port"),
        ("", "canary-host:80", "sources[0].base_url: expected http://host:port"),
        ("", "http://:80/canary", "sources[0].base_url: expected http://host:port"),
        ("", "http://canary-host:99999/", "sources[0].base_url: expected http://host:port"),
        ("", "http://user:canary@host/", "sources[0].base_url: credentials in the URL"),
        ("", "http://host/canary?x=1", "sources[0].base_url: must not have a query"),
        (
            'token_file = "/a"\ntoken_env = "B"\n',
            URL_CANARY,
            "sources[0]: give at most one of token_file, token_env",
        ),
        (
            'token_file = "relative/token"\n',
            URL_CANARY,
            "sources[0].token_file: must be an absolute",
        ),
        ('token_env = "NOT-A-NAME"\n', URL_CANARY, "sources[0].token_env: must be an environment"),
        ('token_credential = "../etc/x"\n', URL_CANARY, "sources[0].token_credential: must be a"),
        ('token_credential = ".."\n', URL_CANARY, "sources[0].token_credential: must be a"),
        ('workspaces = ["a/b"]\n', URL_CANARY, "sources[0].workspaces[0]: 'a/b' is not a valid"),
        ('workspaces = ["a", "a"]\n', URL_CANARY, "sources[0].workspaces: lists a workspace more"),
        ('poll_interval = "0s"\n', URL_CANARY, "sources[0].poll_interval: must be greater"),
        ('timeout = "0s"\n', URL_CANARY, "sources[0].timeout: must be greater than zero"),
        ("poll_jitter = 0.9\n", URL_CANARY, "sources[0].poll_jitter: must be between 0 and 0.5"),
        ('backoff_max = "1s"\n', URL_CANARY, "sources[0].backoff_max: must not be less than"),
        ('stale_after = "1s"\n', URL_CANARY, "sources[0].stale_after: must be longer than"),
        ('expire_after = "30s"\n', URL_CANARY, "sources[0].expire_after: must be longer than"),
        ("max_response_bytes = 10\n", URL_CANARY, "sources[0].max_response_bytes: must be at"),
        ("base_url_typo = 1\n", URL_CANARY, "sources[0].base_url_typo: unknown key"),
        ("", "", "sources[0].base_url: expected http://host:port"),
    ],
)
def test_bad_values_name_their_key(extra: str, base_url: str, expected: str) -> None:
    found = problems(remote(extra, base_url=base_url))
    assert any(p.startswith(expected) for p in found), found


def test_missing_keys_and_wrong_types() -> None:
    assert problems('[[sources]]\nkind = "remote"\nruntime_id = "r"\n') == [
        "sources[0].base_url: required key is missing"
    ]
    found = problems('[[sources]]\nkind = "remote"\nruntime_id = "r"\nbase_url = 8080\n')
    assert found == ["sources[0].base_url: expected a string"]
    found = problems(
        remote() + '[[sources]]\nkind = "remote"\nruntime_id = "remote:gpu-1"\n'
        'base_url = "http://other:1"\n'
    )
    assert any("already used by sources[0]" in p for p in found), found


def test_secret_never_prints_and_compares_by_value() -> None:
    secret = Secret(TOKEN_CANARY)
    for text in (
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        f"{secret:>40}",
        logging.LogRecord(
            "t", logging.INFO, __file__, 1, "token %s %r", (secret, secret), None
        ).getMessage(),
    ):
        assert TOKEN_CANARY not in text
    assert secret == Secret(TOKEN_CANARY) and secret != Secret("other")
    assert hash(secret) == hash(Secret(TOKEN_CANARY))
    assert secret.reveal() == TOKEN_CANARY
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    try:
        raise ValueError(f"failed with {secret}")
    except ValueError as exc:
        assert TOKEN_CANARY not in str(exc)


def test_token_from_a_file_strips_the_newline(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN_CANARY}\n")
    token = load_token(token_file=str(path))
    assert token is not None and token.reveal() == TOKEN_CANARY
    assert load_token() is None  # no token configured: requests carry none


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "token_file does not exist"),
        ("", "token_file is empty"),
        ("two words", "token_file holds characters a bearer token cannot contain"),
        ("x" * (64 * 1024 + 1), "token_file is larger than 65536 bytes"),
    ],
)
def test_token_file_problems_are_safe_to_serve(
    tmp_path: Path, content: str | None, reason: str
) -> None:
    path = tmp_path / "canary-dir" / "token"
    path.parent.mkdir()
    if content is not None:
        path.write_text(content)
    with pytest.raises(TokenUnavailable) as info:
        load_token(token_file=str(path))
    assert str(info.value) == reason  # names the key, never the path or the value


def test_unreadable_and_directory_token_files(tmp_path: Path) -> None:
    with pytest.raises(TokenUnavailable, match="token_file is a directory"):
        load_token(token_file=str(tmp_path))
    path = tmp_path / "token"
    path.write_text("t")
    path.chmod(0)
    try:
        path.read_bytes()
    except PermissionError:
        with pytest.raises(TokenUnavailable, match="permission denied"):
            load_token(token_file=str(path))
    else:  # running as root: permissions do not apply
        assert load_token(token_file=str(path)) == Secret("t")


def test_token_from_env_and_systemd_credential(tmp_path: Path) -> None:
    env = {"YOI_T": f"{TOKEN_CANARY}\n"}
    assert load_token(token_env="YOI_T", environ=env) == Secret(TOKEN_CANARY)
    with pytest.raises(TokenUnavailable, match="token_env is not set"):
        load_token(token_env="YOI_MISSING", environ=env)
    (tmp_path / "remote-a").write_text(TOKEN_CANARY)
    creds = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    assert load_token(token_credential="remote-a", environ=creds) == Secret(TOKEN_CANARY)
    with pytest.raises(TokenUnavailable, match=r"\$CREDENTIALS_DIRECTORY, which is not set"):
        load_token(token_credential="remote-a", environ={})
    with pytest.raises(TokenUnavailable, match="token_credential does not exist"):
        load_token(token_credential="remote-b", environ=creds)
