"""Operator logging: one line per event on stderr, journal-friendly under systemd.

Under systemd (stderr is the journal stream ``JOURNAL_STREAM`` names) each line starts
with a syslog priority prefix (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug)
so journald files it at the right level; otherwise lines carry a timestamp and the level.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Final

_PRIORITY: Final = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", "\n" + f"<{_priority(record)}>")
        return f"<{_priority(record)}>{text}"


def _priority(record: logging.LogRecord) -> int:
    for level, prio in sorted(_PRIORITY.items(), reverse=True):
        if record.levelno >= level:
            return prio
    return 7


def stderr_is_journal(environ: Mapping[str, str] = os.environ) -> bool:
    """``$JOURNAL_STREAM`` names stderr's device and inode: systemd connected stderr to the
    journal. Compared, not just tested for presence, because the variable is inherited by
    processes whose stderr was redirected elsewhere (a shell in a service, a pipe)."""
    device, sep, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # hypercorn's per-request access log is off; its error log joins ours.
    logging.getLogger("hypercorn.access").disabled = True
    logging.getLogger("watchfiles").setLevel(max(logging.WARNING, root.level))
