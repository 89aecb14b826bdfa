"""How an embedded runtime is found: ``module:attribute``, entry points, and bad names."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningDaemon, StartDaemon, wait_for
from tests.embedded_plugins import (
    FAST_SUPERVISOR,
    INSTANCES,
    ThirdPartyRuntime,
    embedded_source_toml,
)
from yoi_registryd.config import ConfigError, EmbeddedSourceConfig, parse_config

RID = "emb-load"


async def runtime_record(d: RunningDaemon) -> Any:
    return await d.get_json(f"/api/runtimes/{RID}")


def plugin_dist(tmp_path: Path, name: str, target: str) -> Path:
    """A real installed distribution (dist-info with entry_points.txt) in a tmp dir."""
    root = tmp_path / "site"
    info = root / "yoi_test_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: yoi-test-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[yoi_registryd.runtimes]\n{name} = {target}\n")
    return root


async def test_third_party_runtime_loaded_by_entry_point(
    start_daemon: StartDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "third-party-" + uuid.uuid4().hex[:8]
    monkeypatch.syspath_prepend(
        str(plugin_dist(tmp_path, name, "tests.embedded_plugins:ThirdPartyRuntime"))
    )
    key = uuid.uuid4().hex
    d = await start_daemon(
        embedded_source_toml(
            runtime_id=RID, entry_point=name, options={"key": key, "workers": ["one"]}
        )
    )

    async def listed() -> bool:
        body = await d.get_json(f"/api/runtimes/{RID}/workers")
        return [w["worker_id"] for w in body["items"]] == ["one"]

    await wait_for(listed, message="the entry point's runtime")
    assert isinstance(INSTANCES[key], ThirdPartyRuntime)
    assert (await runtime_record(d))["label"] == "Third-party runtime"


@pytest.mark.parametrize(("entry_point", "workers"), [("memory", 0), ("demo", 6)])
async def test_built_in_runtimes_are_entry_points(
    start_daemon: StartDaemon, entry_point: str, workers: int
) -> None:
    """The installed package declares ``memory`` and ``demo`` (a memory runtime starts
    empty; the demo one with its default population of six)."""
    d = await start_daemon(
        embedded_source_toml(
            runtime_id=RID,
            entry_point=entry_point,
            label="Built in",
            options={"display_name": "named by options"},
        )
    )

    async def available() -> bool:
        return bool((await runtime_record(d))["registry_status"] == "available")

    await wait_for(available)
    record = await runtime_record(d)
    assert (record["label"], record["worker_count"]) == ("Built in", workers)


async def test_third_party_runtime_loaded_by_module_attribute(start_daemon: StartDaemon) -> None:
    key = uuid.uuid4().hex
    d = await start_daemon(
        embedded_source_toml(
            runtime_id=RID,
            factory="tests.embedded_plugins:ThirdPartyRuntime",
            options={"key": key, "display_name": "From options"},
        )
    )

    async def labelled() -> bool:
        return bool((await runtime_record(d))["label"] == "From options")

    await wait_for(labelled)
    assert isinstance(INSTANCES[key], ThirdPartyRuntime)


@pytest.mark.parametrize(
    ("keys", "code"),
    [
        ({"factory": "tests.no_such_module:Runtime"}, "embedded_factory_not_found"),
        ({"factory": "tests.embedded_plugins:NoSuchRuntime"}, "embedded_factory_not_found"),
        ({"entry_point": "no-such-runtime"}, "embedded_factory_not_found"),
        ({"factory": "tests.embedded_plugins:NOT_CALLABLE"}, "embedded_factory_invalid"),
        ({"factory": "tests.embedded_plugins:not_a_runtime"}, "embedded_runtime_invalid"),
        (
            {"factory": "tests.embedded_plugins:ThirdPartyRuntime", "options": {"bogus": 1}},
            "embedded_factory_failed",
        ),
    ],
)
async def test_a_bad_factory_is_a_supervised_failure_with_a_typed_diagnostic(
    start_daemon: StartDaemon, keys: dict[str, Any], code: str
) -> None:
    d = await start_daemon(FAST_SUPERVISOR + embedded_source_toml(runtime_id=RID, **keys))

    async def failing() -> bool:
        record = await runtime_record(d)
        return bool(record["supervisor"]["restarts"] >= 2)

    await wait_for(failing, message="the supervisor to retry")
    record = await runtime_record(d)
    assert record["registry_status"] == "unavailable"
    assert record["last_error"]["code"] == code
    assert record["supervisor"]["last_error"]["code"] == code
    assert record["consecutive_failures"] >= 2
    assert record["worker_count"] == 0
    message = record["last_error"]["message"]
    assert "Traceback" not in message and "/" not in message
    if "bogus" in str(keys):
        assert "bogus" not in message  # the exception text stays in the operator log


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({}, "sources[0]: give exactly one of factory"),
        (
            {"factory": "a:b", "entry_point": "memory"},
            "sources[0]: give exactly one of factory",
        ),
        ({"factory": "no_colon"}, "sources[0].factory: 'no_colon' is not of the form"),
        ({"factory": "a/b.py:Runtime"}, "sources[0].factory:"),
        ({"entry_point": "has space"}, "sources[0].entry_point:"),
        ({"entry_point": "memory", "stale_after": "0s"}, "sources[0].stale_after:"),
        ({"entry_point": "memory", "workspaces": ["ok", "not ok"]}, "sources[0].workspaces[1]:"),
        ({"entry_point": "memory", "workspaces": ["a", "a"]}, "sources[0].workspaces:"),
        ({"entry_point": "memory", "runtime_id": "bad id"}, "sources[0].runtime_id:"),
        ({"entry_point": "memory", "option": {"x": 1}}, "sources[0].option: unknown key"),
    ],
)
def test_bad_embedded_configuration_names_the_key(keys: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(embedded_source_toml(**keys))
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_embedded_configuration_defaults_and_options() -> None:
    config = parse_config(
        embedded_source_toml(
            entry_point="demo",
            options={"workers": 3, "interval": "1s", "nested": {"deep": [1, 2]}},
        )
    )
    (source,) = config.sources
    assert isinstance(source, EmbeddedSourceConfig)
    assert source.runtime_id == "embedded-worker-runtime"
    assert source.options == {"workers": 3, "interval": "1s", "nested": {"deep": [1, 2]}}
    assert source.workspaces == ()
    assert source.stale_after.total_seconds() == 120
