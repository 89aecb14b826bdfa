"""Runtime sources: one supervised task each, reporting observations to the registry."""

from yoi_registryd.sources.base import Reporter, Source, SourceError, SourceSpec
from yoi_registryd.sources.factory import source_spec

__all__ = ["Reporter", "Source", "SourceError", "SourceSpec", "source_spec"]
