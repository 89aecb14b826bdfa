"""The spec of a ``[[sources]]`` entry, built by the class its kind names.

Each kind's configuration names its class (``implementation``, in ``config.py``); the class
builds its spec (``spec(config)``: label, expiry, and a factory for a fresh source on every
(re)start). Nothing here knows the kinds: a new one needs no change in this module.
"""

from __future__ import annotations

import functools
import pkgutil

from yoi_registryd.config import SourceConfig
from yoi_registryd.sources.base import SourceClass, SourceSpec


@functools.cache
def source_class(implementation: str) -> SourceClass:
    """The class a kind names, imported on first use (so only the kinds in use load)."""
    kind: SourceClass = pkgutil.resolve_name(implementation)
    return kind


def source_spec(config: SourceConfig) -> SourceSpec:
    """How the supervisor runs the source configured by ``config``."""
    return source_class(config.implementation).spec(config)
