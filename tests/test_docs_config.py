"""The configuration the docs show is the configuration the daemon reads.

Every ```toml block in docs/configuration.md and README.md must be a valid configuration as
written, and the tokens it names must load the way the daemon loads them (token files,
variables, credentials and signing keys are provided here, in a temp dir). The reference tables of
docs/configuration.md must list every key of every section of ``yoi_registryd/config.py``
with its real default, so a key added or a default changed in the code alone fails here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest

from yoi_registryd import config as config_module
from yoi_registryd.auth import load_clients
from yoi_registryd.capability import SigningKey, load_signing_key
from yoi_registryd.config import Config, RemoteSourceConfig, parse_config
from yoi_registryd.reload import RESTART_ONLY
from yoi_registryd.secrets import CREDENTIALS_DIRECTORY_ENV, load_token

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"
TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.DOTALL | re.MULTILINE)
HEADING = re.compile(r"^#{1,3} ")
KEY_CELL = re.compile(r"^`([a-z_0-9]+)`$")
LITERAL_CELL = re.compile(r"^`([^`]+)`$")

UNDOCUMENTED: Final = {("RemoteSourceConfig", "token")}
"""Kept in the code only so that an inline token is refused clearly: not offered as a key."""
REQUIRED_VALUES: Final[dict[str, dict[str, Any]]] = {
    "ClientConfig": {"name": "c", "workspaces": ["*"]},
    "WorkspaceConfig": {"id": "w"},
    "RemoteSourceConfig": {"runtime_id": "r", "base_url": "http://127.0.0.1:1"},
    "FileDiscoveryConfig": {"name": "n", "path": "/x.json"},
    "EtcdDiscoveryConfig": {"name": "n", "endpoints": ["http://127.0.0.1:2379"], "prefix": "/p/"},
    "DnsSrvDiscoveryConfig": {"name": "n", "srv_name": "_yoi-runtime._tcp.example"},
}
"""What each section needs besides the key under test, to build it with its defaults."""


def toml_blocks(path: Path) -> list[str]:
    return TOML_BLOCK.findall(path.read_text(encoding="utf-8"))


BLOCKS = [
    pytest.param(text, id=f"{path.name}-{i}")
    for path in (REFERENCE, README)
    for i, text in enumerate(toml_blocks(path))
]


def test_both_documents_have_examples() -> None:
    assert len(toml_blocks(REFERENCE)) >= 8
    assert len(toml_blocks(README)) >= 1


def provide_tokens(config: Config, text: str, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """Create every token the configuration names: files (the text is rewritten to point at
    them), variables and credentials (returned as the environment to load them from)."""
    files, creds = tmp_path / "tokens", tmp_path / "credentials"
    files.mkdir()
    creds.mkdir()
    environ = {CREDENTIALS_DIRECTORY_ENV: str(creds)}
    holders: list[Any] = [*config.clients]
    holders += [s for s in config.sources if isinstance(s, RemoteSourceConfig)]
    holders += [e.remote_template(e.name, "http://x:1", None, ()) for e in config.discovery]

    def provide(text: str, named: str | None, made: Path, content: str) -> str:
        """Write ``content`` to ``made`` and point the text's ``named`` path at it."""
        if named is None:
            return text
        quoted = f'"{named}"'
        assert quoted in text, named
        made.write_text(content + "\n")
        return text.replace(quoted, f'"{made}"')

    for n, holder in enumerate(holders):
        token = f"docs-example-token-{n}"
        text = provide(text, holder.token_file, files / f"{n}.token", token)
        if holder.token_env is not None:
            environ[holder.token_env] = token
        if holder.token_credential is not None:
            (creds / holder.token_credential).write_text(token)
        if isinstance(holder, RemoteSourceConfig) and holder.auth == "capability":
            key = SigningKey.generate().key_string().reveal()
            text = provide(text, holder.signing_key_file, files / f"{n}.key", key)
            if holder.signing_key_credential is not None:
                (creds / holder.signing_key_credential).write_text(key)
    return text, environ


@pytest.mark.parametrize("text", BLOCKS)
def test_every_example_is_a_valid_configuration(text: str, tmp_path: Path) -> None:
    config = parse_config(text, "the example")
    text, environ = provide_tokens(config, text, tmp_path)
    config = parse_config(text, "the example, with its tokens provided")
    # As the daemon does at start-up and on reload: every client's token is read and hashed,
    # every signing key read and parsed.
    assert len(load_clients(config.clients, environ)) == len(config.clients)
    for source in config.sources:
        if isinstance(source, RemoteSourceConfig) and source.auth == "capability":
            load_signing_key(
                key_file=source.signing_key_file,
                key_credential=source.signing_key_credential,
                environ=environ,
            )
    for source in config.sources:
        if isinstance(source, RemoteSourceConfig) and (
            source.token_file or source.token_env or source.token_credential
        ):
            token = load_token(
                token_file=source.token_file,
                token_env=source.token_env,
                token_credential=source.token_credential,
                environ=environ,
            )
            assert token is not None


def struct_info(cls: type[msgspec.Struct]) -> msgspec.inspect.StructType:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return info


def source_classes(section: str = "sources") -> dict[str, type[msgspec.Struct]]:
    """Each ``kind`` and its configuration class, from the union of ``Config.<section>``."""
    (sources,) = [f for f in struct_info(Config).fields if f.name == section]
    assert isinstance(sources.type, msgspec.inspect.ListType)
    union = sources.type.item_type
    assert isinstance(union, msgspec.inspect.UnionType)
    kinds = {}
    for member in union.types:
        assert isinstance(member, msgspec.inspect.StructType)
        kinds[str(member.tag)] = member.cls
    return kinds


def run_check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "yoi_registryd", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_accepts_the_full_example(tmp_path: Path) -> None:
    """The annotated example (the longest block), through the real command line: as written
    it names a token file this machine does not have (check-config says so); with its files
    provided it passes."""
    full = max(toml_blocks(REFERENCE), key=len)
    config = parse_config(full)
    assert {type(s) for s in config.sources} == set(source_classes().values())
    assert config.clients and config.workspaces
    path = tmp_path / "config.toml"
    path.write_text(full, encoding="utf-8")
    result = run_check_config(path)
    assert result.returncode == 1
    [token_file] = [c.token_file for c in config.clients if c.token_file]
    assert result.stderr == f"{path}: clients[0].token_file: {token_file}: does not exist\n"

    text, _ = provide_tokens(config, full, tmp_path)
    audit = tmp_path / "audit" / "audit.jsonl"
    assert config.audit.path is not None
    path.write_text(text.replace(config.audit.path, str(audit)), encoding="utf-8")
    result = run_check_config(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"{path}: OK ({len(config.sources)} sources; audit records go to {audit})"
    )


# -- the reference tables ---------------------------------------------------------------------


def expected_sections() -> list[tuple[str, str, type[msgspec.Struct]]]:
    """(heading in the reference, dotted prefix of its keys, class) for every section."""
    sections = []
    for field in struct_info(Config).fields:
        t = field.type
        if field.name in ("sources", "discovery"):
            for kind, cls in source_classes(field.name).items():
                sections.append((f'### kind = "{kind}"', field.name, cls))
        elif isinstance(t, msgspec.inspect.ListType):
            assert isinstance(t.item_type, msgspec.inspect.StructType), field.name
            sections.append((f"## `[[{field.name}]]`", field.name, t.item_type.cls))
        else:
            assert isinstance(t, msgspec.inspect.StructType), field.name
            sections.append((f"## `[{field.name}]`", field.name, t.cls))
    return sections


def section_table(heading: str) -> list[dict[str, str]]:
    """The rows of the first table under ``heading``, as {column: cell}."""
    lines = REFERENCE.read_text(encoding="utf-8").splitlines()
    assert heading in lines, f"docs/configuration.md has no section {heading!r}"
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if HEADING.match(lines[i])), len(lines))
    table = [line for line in lines[start:end] if line.startswith("|")]
    assert len(table) > 2, f"{heading}: no table"

    def cells(line: str) -> list[str]:
        return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]

    columns = cells(table[0])
    return [dict(zip(columns, cells(line), strict=True)) for line in table[2:]]


SECTIONS = [pytest.param(h, p, c, id=h.strip("#` ")) for h, p, c in expected_sections()]


@pytest.mark.parametrize(("heading", "prefix", "cls"), SECTIONS)
def test_the_reference_lists_every_key_with_its_default(
    heading: str, prefix: str, cls: type[msgspec.Struct]
) -> None:
    rows = {}
    # A discovery kind's keys: those every kind takes (under [[discovery]]), then its own.
    shared = section_table("## `[[discovery]]`") if prefix == "discovery" else []
    for row in shared + section_table(heading):
        match = KEY_CELL.match(row["key"])
        assert match is not None, f"{heading}: {row['key']!r} is not a key"
        rows[match.group(1)] = row
    info = struct_info(cls)
    fields = {f.name: f for f in info.fields if (cls.__name__, f.name) not in UNDOCUMENTED}
    tag = info.tag
    documented = set(rows) - ({"kind"} if tag else set())
    assert documented == set(fields), f"{heading}: keys in the docs and in config.py differ"

    required = {**REQUIRED_VALUES.get(cls.__name__, {}), **({"kind": tag} if tag else {})}
    defaults = msgspec.convert(required, cls, dec_hook=config_module._dec_hook)
    for name, field in fields.items():
        default = rows[name]["default"]
        where = f"{heading} {name}"
        if default == "(required)":
            assert field.required, f"{where}: documented as required, but has a default"
            continue
        assert not field.required, f"{where}: required in config.py"
        if default == "none":
            assert getattr(defaults, name) is None, f"{where}: the default is not none"
        elif literal := LITERAL_CELL.match(default):
            value = msgspec.toml.decode(f"v = {literal.group(1)}")["v"]
            documented_default = msgspec.convert(
                {**required, name: value}, cls, dec_hook=config_module._dec_hook
            )
            assert getattr(documented_default, name) == getattr(defaults, name), (
                f"{where}: documented default {default} differs from config.py"
            )
        if "reload" in rows[name] and (
            f"{prefix}.{name}" in RESTART_ONLY or prefix in RESTART_ONLY
        ):
            assert rows[name]["reload"] == "restart", f"{where}: needs a restart"
