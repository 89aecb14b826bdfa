"""Build a source object from its configuration entry."""

from __future__ import annotations

from yoi_registryd.config import (
    EmbeddedSourceConfig,
    LocalSourceConfig,
    RemoteSourceConfig,
    SourceConfig,
)
from yoi_registryd.sources.base import Source


def build_source(config: SourceConfig) -> Source:
    if isinstance(config, LocalSourceConfig):
        from yoi_registryd.sources.local import LocalCompatibilitySource

        return LocalCompatibilitySource(config)
    if isinstance(config, RemoteSourceConfig):
        from yoi_registryd.sources.remote import RemoteRuntimeSource

        return RemoteRuntimeSource(config)
    if isinstance(config, EmbeddedSourceConfig):
        from yoi_registryd.sources.embedded import EmbeddedRuntimeSource

        return EmbeddedRuntimeSource(config)
    raise TypeError(f"unsupported source configuration {type(config).__name__}")
