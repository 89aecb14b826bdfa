"""What the docs quote is what the code does: error codes and their statuses, diagnostic
codes, kinds, command-line options, exit codes, links and commands.

``test_docs_config.py`` does the same for the configuration reference; this file covers the
rest of ``docs/`` and the README, so a code changed in one place alone fails here.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
from pathlib import Path
from typing import Final

import pytest

import yoi_registryd
from yoi_registryd import cli, status_cli
from yoi_registryd.errors import RegistryError
from yoi_registryd.sources import embedded, local, remote_projection

ROOT: Final = Path(__file__).resolve().parent.parent
DOCS: Final = ROOT / "docs"
README: Final = ROOT / "README.md"
SOURCE_TEXT: Final = "\n".join(
    p.read_text(encoding="utf-8") for p in (ROOT / "yoi_registryd").rglob("*.py")
)
ERROR_ROW: Final = re.compile(r"^\| `([a-z_]+)` \| (\d{3}) \|", re.MULTILINE)
DIAGNOSTIC_CODE: Final = re.compile(r"`((?:local_pod|remote_runtime|embedded_runtime)_[a-z_]+)`")


def documents() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def all_error_classes() -> dict[str, type[RegistryError]]:
    for module in pkgutil.walk_packages(yoi_registryd.__path__, "yoi_registryd."):
        if module.name != "yoi_registryd.__main__":
            importlib.import_module(module.name)
    found: dict[str, type[RegistryError]] = {}
    pending: list[type[RegistryError]] = [RegistryError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found


def test_every_documented_error_code_exists_with_its_status() -> None:
    rows = ERROR_ROW.findall((DOCS / "api.md").read_text(encoding="utf-8"))
    assert len(rows) >= 20
    classes = all_error_classes()
    for code, status in rows:
        assert f'"{code}"' in SOURCE_TEXT, f"docs/api.md lists {code!r}, the code never says it"
        if code in classes and isinstance(getattr(classes[code], "status", None), int):
            assert classes[code].status == int(status), code


def test_every_documented_diagnostic_code_or_field_exists() -> None:
    for path in documents():
        for code in set(DIAGNOSTIC_CODE.findall(path.read_text(encoding="utf-8"))):
            # A code (quoted in the source) or a field of that name (``local_pod_inspection``).
            found = re.search(rf"\b{code}\b", SOURCE_TEXT)
            assert found, f"{path.name} quotes {code!r}, the code has none"


def test_runtime_kinds_are_the_ones_served() -> None:
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    for kind in (local.RUNTIME_KIND, remote_projection.RUNTIME_KIND, embedded.RUNTIME_KIND):
        assert f"`{kind}`" in api, kind
    assert local.RUNTIME_KIND == "local_pod"


def test_contract_citations_point_at_sections_that_exist() -> None:
    contract = (DOCS / "contract.md").read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", heading.lower()).replace(" ", "-")
        for heading in re.findall(r"^## (.+)$", contract, re.MULTILINE)
    }
    cited = 0
    for path in documents():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"contract §\d(?!\]\(contract\.md)", text), path.name
        for anchor in re.findall(r"\(contract\.md#([a-z0-9-]+)\)", text):
            assert anchor in anchors, (path.name, anchor)
            cited += 1
    assert cited >= 5


def test_commands_in_the_docs_name_no_path_of_one_machine() -> None:
    for path in documents():
        for block in re.findall(r"^```sh\n(.*?)^```", path.read_text(), re.S | re.M):
            assert "/work/" not in block, (path.name, block)


def parser_options() -> set[str]:
    parser = cli._parser()
    options = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= set(sub._option_string_actions)
    return options


def test_the_command_lines_in_the_docs_use_options_that_exist() -> None:
    options = parser_options()
    for path in documents():
        text = path.read_text(encoding="utf-8")
        blocks = re.findall(r"^```(?:text|sh|)\n(.*?)^```", text, re.S | re.M)
        for block in blocks:
            for line in block.splitlines():
                words = line.removeprefix("$ ").removeprefix("sudo ").split()
                if not words or not words[0].endswith("yoi-registryd"):
                    continue  # not our command (systemctl, curl, ...)
                for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]+)", line):
                    assert option in options, (path.name, line)


@pytest.mark.parametrize("path", [README, DOCS / "observability.md"], ids=lambda p: p.name)
def test_status_exit_codes_are_documented_as_they_are(path: Path) -> None:
    text = " ".join(path.read_text(encoding="utf-8").split())
    for code, meaning in (
        (status_cli.EXIT_READY, "ready"),
        (status_cli.EXIT_NOT_READY, "answering but not ready"),
        (status_cli.EXIT_UNREACHABLE, "not reachable"),
        (status_cli.EXIT_REFUSED, "refused"),
        (status_cli.EXIT_USAGE, "bad input"),
    ):
        assert f"{code} {meaning}" in text, (code, meaning)
    assert status_cli.TOKEN_ENV in text
