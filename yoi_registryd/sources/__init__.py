"""Runtime sources: one supervised task each, reporting observations to the registry."""

from yoi_registryd.sources.base import Reporter, Source, SourceError
from yoi_registryd.sources.factory import build_source

__all__ = ["Reporter", "Source", "SourceError", "build_source"]
