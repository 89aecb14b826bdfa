"""Each source and discovery kind is described once, by its configuration type: its name,
its checks and the class that builds it. These tests hold every kind to that shape."""

from __future__ import annotations

import pkgutil
from typing import Any, get_args

import pytest

from yoi_registryd.config import DiscoveryConfig, SourceConfig, parse_config
from yoi_registryd.discovery.manager import backend_factory
from yoi_registryd.sources.factory import source_class, source_spec

CONFIG = """
[[sources]]
kind = "local"
data_dir = "/nonexistent/yoi"

[[sources]]
kind = "remote"
runtime_id = "remote-1"
base_url = "http://127.0.0.1:9"

[[sources]]
kind = "embedded"
entry_point = "memory"

[[discovery]]
kind = "file"
name = "from-file"
path = "/nonexistent/runtimes.json"

[[discovery]]
kind = "etcd"
name = "from-etcd"
endpoints = ["http://127.0.0.1:9"]
prefix = "/yoi/runtimes/"

[[discovery]]
kind = "dns_srv"
name = "from-dns"
srv_name = "_yoi-runtime._tcp.example.test"
"""


@pytest.mark.parametrize("kind", get_args(SourceConfig), ids=lambda k: k.__name__)
def test_a_source_kind_names_a_class_that_serves_its_kind(kind: Any) -> None:
    assert source_class(kind.implementation).source_kind == kind.source_kind


def test_every_configured_source_is_built_by_its_kind() -> None:
    config = parse_config(CONFIG)
    assert {type(src) for src in config.sources} == set(get_args(SourceConfig))
    for src in config.sources:
        spec = source_spec(src)
        source = spec.factory()
        assert (spec.runtime_id, spec.source_kind) == (src.runtime_id, src.source_kind)
        assert type(source) is pkgutil.resolve_name(src.implementation)
        assert source.runtime_id == src.runtime_id
        assert spec.config is src


def test_every_discovery_kind_builds_its_own_backend() -> None:
    config = parse_config(CONFIG)
    assert {type(entry) for entry in config.discovery} == set(get_args(DiscoveryConfig))
    for entry in config.discovery:
        backend = backend_factory(entry)()
        assert type(backend).__module__ == f"yoi_registryd.discovery.{entry.kind}"
        assert entry.implementation.endswith(f":{type(backend).__name__}")
