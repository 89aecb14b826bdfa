"""The wall clock every timestamp the registry serves is read from.

Records carry aware UTC datetimes (``last_seen_at``, ``next_attempt_at``...). Sources, the
supervisor, reloads and discovery stamp them without depending on the registry actor that
stores them; intervals and deadlines use trio's monotonic clock instead.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)
