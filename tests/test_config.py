"""Configuration: TOML into typed structs, errors that name the key, and where it is found."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from yoi_registryd import __version__
from yoi_registryd import config as config_module
from yoi_registryd.config import (
    CONFIG_ENV,
    DEFAULT_LISTEN,
    Config,
    ConfigError,
    LocalSourceConfig,
    load_config,
    parse_config,
    resolve_config_path,
)


def problems_of(text: str | bytes) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert info.value.problems, "a ConfigError must say what is wrong"
    return info.value.problems


def only_problem(text: str | bytes) -> str:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    return problems[0]


# -- defaults ---------------------------------------------------------------------------------


def test_empty_file_gives_the_built_in_defaults() -> None:
    parsed = parse_config("")
    assert parsed == Config()
    assert parsed.server.listen == [DEFAULT_LISTEN]
    assert DEFAULT_LISTEN.startswith("127.0.0.1:")
    assert parsed.server.conceal_invisible_workers is True
    assert parsed.logging.level == "info"
    assert parsed.supervisor.backoff_initial == timedelta(milliseconds=500)
    assert parsed.supervisor.backoff_max == timedelta(seconds=60)
    assert len(parsed.sources) == 1
    source = parsed.sources[0]
    assert isinstance(source, LocalSourceConfig)
    assert source.runtime_id == "local-worker-runtime"
    assert source.data_dir is None and source.workspace_root is None


def test_explicit_defaults_round_trip() -> None:
    text = """
[server]
listen = ["127.0.0.1:38790"]
unix_socket_mode = "0660"
shutdown_grace = "10s"
conceal_invisible_workers = true

[supervisor]
backoff_initial = "500ms"
backoff_max = "1m"
healthy_after = "60s"
jitter = true

[registry]
channel_capacity = 1024

[logging]
level = "info"

[[sources]]
kind = "local"
runtime_id = "local-worker-runtime"
label = "Local Worker runtime"
rescan_interval = "30s"
stale_after = "2m"
liveness_check = true
max_metadata_bytes = 1048576
watch = true
"""
    assert parse_config(text) == Config()


def test_sources_can_be_empty() -> None:
    assert parse_config("sources = []").sources == []


def test_default_data_dir_follows_yoi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("YOI_DATA_DIR", "YOI_HOME", "YOI_RUNTIME_DIR", "XDG_RUNTIME_DIR", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    source = LocalSourceConfig()
    # yoi's current default (contract-v2 section 3.2), whether or not it exists yet.
    assert source.resolved_data_dir() == home / ".local" / "share" / "yoi"
    assert source.resolved_runtime_dir() == home / ".yoi" / "run"
    # The older ~/.yoi is still found while the current one does not exist ...
    (home / ".yoi").mkdir(parents=True)
    assert source.resolved_data_dir() == home / ".yoi"
    # ... and no longer once it does.
    (home / ".local" / "share" / "yoi").mkdir(parents=True)
    assert source.resolved_data_dir() == home / ".local" / "share" / "yoi"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    assert source.resolved_data_dir() == home / ".yoi"  # $XDG_DATA_HOME/yoi does not exist
    (tmp_path / "xdg-data" / "yoi").mkdir(parents=True)
    assert source.resolved_data_dir() == tmp_path / "xdg-data" / "yoi"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")  # not absolute: as if unset
    assert source.resolved_data_dir() == home / ".local" / "share" / "yoi"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert source.resolved_runtime_dir() == tmp_path / "xdg" / "yoi"
    monkeypatch.setenv("YOI_HOME", str(tmp_path / "yoihome"))
    assert source.resolved_data_dir() == tmp_path / "yoihome"
    assert source.resolved_runtime_dir() == tmp_path / "yoihome" / "run"
    monkeypatch.setenv("YOI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("YOI_RUNTIME_DIR", str(tmp_path / "rt"))
    assert source.resolved_data_dir() == tmp_path / "data"
    assert source.resolved_runtime_dir() == tmp_path / "rt"
    explicit = LocalSourceConfig(data_dir="/srv/yoi", runtime_dir="/run/yoi")
    assert explicit.resolved_data_dir() == Path("/srv/yoi")
    assert explicit.resolved_runtime_dir() == Path("/run/yoi")
    assert explicit.resolved_runtime_stores(Path("/srv/yoi")) == (Path("/srv/yoi/runtime"),)
    stores = LocalSourceConfig(runtime_stores=["/a", "/b"]).resolved_runtime_stores(Path("/x"))
    assert stores == (Path("/a"), Path("/b"))


# -- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ('"500ms"', timedelta(milliseconds=500)),
        ('"2s"', timedelta(seconds=2)),
        ('"5m"', timedelta(minutes=5)),
        ('"1h"', timedelta(hours=1)),
        ('"1d"', timedelta(days=1)),
        ('"1.5s"', timedelta(seconds=1.5)),
        ('" 3s "', timedelta(seconds=3)),
        ("3", timedelta(seconds=3)),
        ("0.25", timedelta(milliseconds=250)),
        ("0", timedelta(0)),
    ],
)
def test_durations(written: str, expected: timedelta) -> None:
    parsed = parse_config(f"[server]\nshutdown_grace = {written}\n")
    assert parsed.server.shutdown_grace == expected


@pytest.mark.parametrize(
    "written",
    ['"5 parsecs"', '"5"', '""', '"ms"', '"-1s"', '"1.s"', "-1", "true", "[]", "1e400", "nan"],
)
def test_bad_durations_name_the_key(written: str) -> None:
    problem = only_problem(f"[server]\nshutdown_grace = {written}\n")
    assert problem.startswith("server.shutdown_grace: "), problem


def test_bad_duration_in_a_source_names_its_index() -> None:
    text = '[[sources]]\nkind = "local"\n[[sources]]\nkind = "local"\nruntime_id = "b"\n'
    problem = only_problem(text + 'stale_after = "soon"\n')
    assert problem.startswith("sources[1].stale_after: "), problem
    assert "soon" in problem


# -- unknown keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("lisen = 1\n", "lisen"),
        ("[server]\nlisten_on = []\n", "server.listen_on"),
        ("[supervisor]\nbackof_max = '1s'\n", "supervisor.backof_max"),
        ("[registry]\ncapacity = 1\n", "registry.capacity"),
        ("[logging]\nfile = '/tmp/x'\n", "logging.file"),
        ("[[sources]]\nkind = 'local'\ndatadir = '/x'\n", "sources[0].datadir"),
        (
            "[[sources]]\nkind = 'local'\n"
            "[[sources]]\nkind = 'local'\nruntime_id = 'b'\nwatch_it = 1\n",
            "sources[1].watch_it",
        ),
        ("[surprise]\nx = 1\n", "surprise"),
    ],
)
def test_unknown_keys_are_errors_naming_the_dotted_path(text: str, key: str) -> None:
    assert only_problem(text) == f"{key}: unknown key"


def test_unknown_source_kind_is_an_error() -> None:
    problem = only_problem("[[sources]]\nkind = 'carrier-pigeon'\n")
    assert problem.startswith("sources[0].kind: "), problem


def test_wrong_types_name_the_key() -> None:
    assert only_problem("[server]\nlisten = 5\n").startswith("server.listen: ")
    assert only_problem("[logging]\nlevel = 'loud'\n").startswith("logging.level: ")
    assert only_problem("[registry]\nchannel_capacity = 'x'\n").startswith(
        "registry.channel_capacity: "
    )


# -- cross-key checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("nope", "host:port"),
        (":80", "host:port"),
        ("127.0.0.1:99999", "port"),
        ("[::1]:abc", "port"),
        ("unix:relative.sock", "absolute"),
    ],
)
def test_bad_listen_address(address: str, why: str) -> None:
    problem = only_problem(f'[server]\nlisten = ["127.0.0.1:0", "{address}"]\n')
    assert problem.startswith("server.listen[1]: "), problem
    assert why in problem


def test_good_listen_addresses() -> None:
    listen = ["[::1]:0", "unix:/run/yoi-registryd.sock", "0.0.0.0:8080", "localhost:1"]
    text = "[server]\nlisten = [" + ", ".join(f'"{a}"' for a in listen) + "]\n"
    assert parse_config(text).server.listen == listen


def test_empty_listen_is_an_error() -> None:
    assert only_problem("[server]\nlisten = []\n").startswith("server.listen: ")


def test_duplicate_runtime_id() -> None:
    text = "[[sources]]\nkind = 'local'\nruntime_id = 'a'\n" * 2
    problem = only_problem(text)
    assert problem.startswith("sources[1].runtime_id: "), problem
    assert "sources[0]" in problem


@pytest.mark.parametrize("runtime_id", ["", "a.b", "a/b", "x" * 121, "with space"])
def test_invalid_runtime_id(runtime_id: str) -> None:
    problem = only_problem(f"[[sources]]\nkind = 'local'\nruntime_id = '{runtime_id}'\n")
    assert problem.startswith("sources[0].runtime_id: "), problem


@pytest.mark.parametrize("key", ["data_dir", "runtime_dir", "workspace_root"])
def test_relative_paths_are_errors(key: str) -> None:
    problem = only_problem(f"[[sources]]\nkind = 'local'\n{key} = 'relative/dir'\n")
    assert problem == f"sources[0].{key}: must be an absolute path"


def test_every_problem_is_reported_at_once() -> None:
    text = """
[server]
listen = ["nope"]
[[sources]]
kind = "local"
runtime_id = "a.b"
data_dir = "rel"
"""
    problems = problems_of(text)
    assert [p.split(":", 1)[0] for p in problems] == [
        "server.listen[0]",
        "sources[0].runtime_id",
        "sources[0].data_dir",
    ]


@pytest.mark.parametrize("text", [b"[server\n", b"a = ", b"x = 'unterminated\n", b"\xff\xfe"])
def test_malformed_toml(text: bytes) -> None:
    assert only_problem(text).startswith("not valid TOML: ")


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nbogus = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.problems == ["server.bogus: unknown key"]
    with pytest.raises(ConfigError) as missing:
        load_config(tmp_path / "absent.toml")
    assert missing.value.problems[0].startswith("cannot read the config file")


# -- where the config comes from --------------------------------------------------------------


def test_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system = tmp_path / "etc" / "config.toml"
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG_PATH", system)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert resolve_config_path(None) is None  # no system file: built-in defaults
    system.parent.mkdir()
    system.write_text("")
    assert resolve_config_path(None) == system
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "env.toml"))
    assert resolve_config_path(None) == tmp_path / "env.toml"
    assert resolve_config_path(str(tmp_path / "flag.toml")) == tmp_path / "flag.toml"
    monkeypatch.setenv(CONFIG_ENV, "")
    assert resolve_config_path(None) == system


# -- the check-config command, as a real subprocess ---------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    return subprocess.run(
        [sys.executable, "-m", "yoi_registryd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
        check=False,
    )


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        f'[server]\nlisten = ["127.0.0.1:0"]\n[[sources]]\nkind = "local"\n'
        f'data_dir = "{tmp_path}"\nstale_after = "500ms"\n'
    )
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nshutdown_grace = "2 fortnights"\n')
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[logging]\ncolour = true\n")

    ok = run_cli("check-config", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout

    failed = run_cli("check-config", str(bad))
    assert failed.returncode == 1
    assert "server.shutdown_grace" in failed.stderr
    assert "2 fortnights" in failed.stderr
    assert str(bad) in failed.stderr
    assert "OK" not in failed.stdout

    failed = run_cli("check-config", str(unknown))
    assert failed.returncode == 1
    assert "logging.colour: unknown key" in failed.stderr

    # No path argument: --config, then $YOI_REGISTRYD_CONFIG.
    assert run_cli("--config", str(bad), "check-config").returncode == 1
    via_env = run_cli("check-config", env={CONFIG_ENV: str(unknown)})
    assert via_env.returncode == 1
    assert "logging.colour" in via_env.stderr
    assert run_cli("check-config", env={CONFIG_ENV: str(good)}).returncode == 0

    missing = run_cli("check-config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr


FIVE_MISTAKES = """
[server]
lisen = ["127.0.0.1:1"]
max_connections = "many"

[[sources]]
kind = "lokal"

[[sources]]
kind = "local"
runtime_id = "a.b"

[[clients]]
name = "web"
workspaces = ["*"]
token = "not-here"
"""


def test_check_config_reports_five_mistakes_in_five_lines(tmp_path: Path) -> None:
    """A typo, a type error, an unknown enum value (with the allowed ones), an invalid id (in
    the source after the dropped one: named by its index in the file) and an inline client
    token (named as such): one pass, one line each, exit 1."""
    path = tmp_path / "five.toml"
    path.write_text(FIVE_MISTAKES)
    result = run_cli("check-config", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        f"{path}: server.lisen: unknown key",
        f"{path}: server.max_connections: Expected `int`, got `str`",
        f'{path}: sources[0].kind: unknown kind "lokal"; expected one of "local", "remote", '
        '"embedded"',
        f"{path}: clients[0].token: tokens are never written inline; use token_sha256, "
        "token_file, token_env or token_credential",
        f"{path}: sources[1].runtime_id: 'a.b' is not a valid id (1 to 120 bytes of "
        "[A-Za-z0-9_:-])",
    ]
    assert "not-here" not in result.stderr


def test_enum_problems_list_the_allowed_values() -> None:
    assert only_problem("[logging]\nlevel = 'loud'\n") == (
        'logging.level: expected one of "debug", "info", "warning", "error", got "loud"'
    )
    assert only_problem("[audit]\non_failure = 'drop'\n") == (
        'audit.on_failure: expected one of "refuse", "serve", got "drop"'
    )


def test_type_errors_in_several_sections_are_all_reported() -> None:
    problems = problems_of(
        "[server]\nmax_body_bytes = 'x'\n[registry]\nchannel_capacity = true\n"
        "[[sources]]\nkind = 'local'\nrescan_interval = 'soon'\n"
        "[[sources]]\nkind = 'remote'\nruntime_id = 'r'\n"
    )
    assert [p.split(":", 1)[0] for p in problems] == [
        "server.max_body_bytes",
        "registry.channel_capacity",
        "sources[0].rescan_interval",
        "sources[1].base_url",
    ]
    assert problems[3] == "sources[1].base_url: required key is missing"


def test_check_config_knows_what_would_fail_at_start(tmp_path: Path) -> None:
    """Without starting: an entry point that does not exist, a factory that does not import,
    a token file that is not there, a custom policy that does not exist, and (with --demo)
    a runtime id the demo runtime needs."""
    path = tmp_path / "start.toml"
    path.write_text(
        '[[sources]]\nkind = "embedded"\nruntime_id = "embedded-demo"\nentry_point = "nope"\n'
        '[[sources]]\nkind = "embedded"\nruntime_id = "f"\nfactory = "no_such_module:make"\n'
        f'[[clients]]\nname = "web"\nworkspaces = ["*"]\ntoken_file = "{tmp_path}/absent"\n'
        '[policy]\ncustom = "os:no_such_policy"\n'
    )
    result = run_cli("check-config", "--demo", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}: sources[0].entry_point: no entry point 'nope' in the group "
        "yoi_registryd.runtimes",
        f"{path}: sources[1].factory: the runtime factory 'no_such_module:make': module not found",
        f"{path}: clients[0].token_file: {tmp_path}/absent: does not exist",
        f"{path}: policy.custom: 'os' has no attribute 'no_such_policy'",
        "--demo: the demo runtime's runtime_id: 'embedded-demo' is already used by sources[0]",
    ]


def test_options_go_before_or_after_the_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[logging]\ncolour = true\n")
    for args in (["--config", str(bad), "check-config"], ["check-config", "--config", str(bad)]):
        result = run_cli(*args)
        assert result.returncode == 1, args
        assert "logging.colour: unknown key" in result.stderr
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout == f"yoi-registryd {__version__}\n"
