"""What ``check-config`` can know about a valid configuration without starting the daemon.

``parse_config`` checks a file's shape and the rules between its keys. A file can pass that
and still be refused at start, or start with a source that can only fail: a factory or
entry point that does not import, a token file that is not there, a custom policy or audit
sink that does not exist, an audit file that cannot be created. Those are checked here.

Not checked: ``token_env`` and ``token_credential`` (they live in the service's
environment, not necessarily in the shell running ``check-config``), and data dirs (a
missing one is a ``degraded`` runtime the daemon reports, not a reason to refuse).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yoi_registryd.config import (
    Config,
    ConfigError,
    EmbeddedSourceConfig,
    RemoteSourceConfig,
    import_object,
)
from yoi_registryd.secrets import TokenUnavailable, load_token
from yoi_registryd.sources.base import SourceError


def preflight(config: Config) -> list[str]:
    """Every problem the daemon would meet at start (or its sources at once), by key."""
    problems: list[str] = []
    for i, source in enumerate(config.sources):
        key = f"sources[{i}]"
        if isinstance(source, EmbeddedSourceConfig):
            from yoi_registryd.sources.embedded import load_factory

            try:
                load_factory(source)
            except SourceError as exc:
                name = "factory" if source.factory is not None else "entry_point"
                problems.append(f"{key}.{name}: {exc.message}")
        elif isinstance(source, RemoteSourceConfig) and source.token_file is not None:
            problems.extend(_token_file(f"{key}.token_file", source.token_file))
    for i, client in enumerate(config.clients):
        if client.token_file is not None:
            problems.extend(_token_file(f"clients[{i}].token_file", client.token_file))
    if config.policy.custom is not None:
        problems.extend(_callable(config.policy.custom, "policy.custom"))
    audit = config.audit
    if audit.sink == "file":
        problems.extend(_writable_file("audit.path", audit.resolved_path()))
    elif audit.sink != "stderr":
        problems.extend(_callable(audit.sink, "audit.sink"))
    return problems


def _token_file(key: str, path: str) -> list[str]:
    try:
        load_token(token_file=path)
    except TokenUnavailable as exc:
        return [f"{key}: {path}: {str(exc).removeprefix('token_file ')}"]
    return []


def _callable(spec: str, key: str) -> list[str]:
    try:
        target: Callable[..., Any] = import_object(spec, key)
    except ConfigError as exc:
        return exc.problems
    return [] if callable(target) else [f"{key}: {spec!r} is not callable"]


def _writable_file(key: str, path: Path) -> list[str]:
    """The file exists and is writable, or its nearest existing directory lets it be made."""
    if path.exists():
        if path.is_dir():
            return [f"{key}: {path} is a directory"]
        return [] if os.access(path, os.W_OK) else [f"{key}: {path} is not writable"]
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return [f"{key}: {path} cannot be created ({parent} is not a writable directory)"]
    return []
