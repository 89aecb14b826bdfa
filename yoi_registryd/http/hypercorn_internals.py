"""hypercorn's internals the server is built on: the one module that imports them, and why.

hypercorn's public API is its command line and ``hypercorn.trio.serve``. That ``serve`` loses
requests at shutdown and cannot bound connections or HTTP/2 (``http/server.py``'s and
``http/http2.py``'s docstrings say how), so the daemon runs hypercorn's per-connection
machinery itself. Each piece, and what uses it:

* ``TCPServer`` (``hypercorn.trio.tcp_server``): one connection's read loop, keep-alive timer
  and writes. ``http/server.py`` subclasses it to run over a stream that tracks what the
  shutdown needs, to choose the protocols, and to stop its keep-alive timer once the peer
  has gone, and to serve a request with less scheduling; it overrides ``run``,
  ``_read_data`` and ``protocol_send`` and uses ``_close``, ``_initiate_server_close``,
  ``_task_group`` and ``send_lock``.
* ``ProtocolWrapper`` (``hypercorn.protocol``): the switch from HTTP/1.1 to HTTP/2 on a
  prior-knowledge preface or ``Upgrade: h2c``, signalled by ``H2ProtocolAssumedError`` and
  ``H2CProtocolRequiredError``. ``http/server.py`` replaces the protocols it switches
  between (HTTP/2 refused, or bounded).
* ``H11Protocol`` and ``H2Protocol`` (``hypercorn.protocol.h11``/``.h2``): ``http/http2.py``
  subclasses them to refuse HTTP/2 or to bound it (streams, stalls, buffered bytes, the
  header deadline), which needs their stream table and buffers, the h2 connection and the
  methods that create, send on and close streams. ``http/reason_phrase.py`` wraps
  ``H11Protocol._send_h11_event`` to put a reason phrase on status lines.
* The events between a connection and its protocol (``RawData``, ``Closed``, ``Updated``;
  a stream's ``Body`` and ``Data``): what the subclasses above receive and send.
* ``TaskGroup``, ``WorkerContext``, ``Lifespan``, ``ConnectionState``, ``wrap_app`` and
  ``parse_socket_addr``: what ``hypercorn.trio.serve`` builds around ``TCPServer``, built
  here the same way, since ``serve`` itself is not used.

None of these is documented, and hypercorn changes them between minor versions, so
``pyproject.toml`` pins hypercorn to ``>=0.18,<0.19`` (:data:`PIN`): an upgrade is a
deliberate change, made after ``tests/test_hypercorn_internals.py`` passes against it. That
test checks every name, call signature and attribute listed in :data:`USES` against the
installed hypercorn and names the piece that is missing. Everything else in the package
imports hypercorn only through this module (``hypercorn.config.Config``, public, excepted).
"""

from __future__ import annotations

from typing import Final

import msgspec

PIN: Final = "hypercorn>=0.18,<0.19"
"""The versions whose internals match :data:`USES` (``pyproject.toml`` says the same)."""


class Use(msgspec.Struct, frozen=True):
    """One name this module takes from hypercorn, and what of it the package relies on."""

    module: str
    name: str
    parameters: tuple[str, ...] | None = None
    """The names of its first parameters (``self`` left out), in order, when it is called
    with them positionally or by name; None: not called, or called without arguments."""
    attributes: tuple[str, ...] = ()
    """Attributes (methods, or instance attributes set by its methods) used or overridden."""


_PROTOCOL_ARGS: Final = (
    "app",
    "config",
    "context",
    "task_group",
    "connection_state",
    "ssl",
    "client",
    "server",
    "send",
)
"""What hypercorn's protocols are built with (positionally, by ``http/server.py``)."""

USES: Final[tuple[Use, ...]] = (
    Use("hypercorn.events", "Closed"),
    Use("hypercorn.events", "RawData", ("data",)),
    Use("hypercorn.events", "Updated", ("idle",)),
    Use(
        "hypercorn.protocol",
        "ProtocolWrapper",
        (*_PROTOCOL_ARGS[:4], "state", *_PROTOCOL_ARGS[5:], "alpn_protocol"),
        ("handle", "protocol"),
    ),
    Use("hypercorn.protocol.events", "Body", ("stream_id", "data")),
    Use("hypercorn.protocol.events", "Data", ("stream_id", "data")),
    Use("hypercorn.protocol.events", "Event", None, ("stream_id",)),
    Use(
        "hypercorn.protocol.h11",
        "H11Protocol",
        _PROTOCOL_ARGS,
        ("_check_protocol", "_send_h11_event", "send"),
    ),
    Use(
        "hypercorn.protocol.h11", "H2CProtocolRequiredError", None, ("data", "headers", "settings")
    ),
    Use("hypercorn.protocol.h11", "H2ProtocolAssumedError", None, ("data",)),
    Use(
        "hypercorn.protocol.h2",
        "H2Protocol",
        _PROTOCOL_ARGS,
        (
            "_close_stream",
            "_create_stream",
            "_flush",
            "_send_data",
            "_window_updated",
            "closed",
            "connection",
            "handle",
            "initiate",
            "send",
            "stream_buffers",
            "stream_send",
            "streams",
            "task_group",
        ),
    ),
    Use(
        "hypercorn.trio.lifespan",
        "Lifespan",
        ("app", "config", "state"),
        ("handle_lifespan", "wait_for_shutdown", "wait_for_startup"),
    ),
    Use("hypercorn.trio.task_group", "TaskGroup", (), ("__aenter__", "__aexit__")),
    Use(
        "hypercorn.trio.tcp_server",
        "TCPServer",
        ("app", "config", "context", "state", "stream"),
        (
            "__await__",
            "_close",
            "_initiate_server_close",
            "_read_data",
            "_task_group",
            "app",
            "config",
            "context",
            "protocol",
            "protocol_send",
            "run",
            "send_lock",
            "state",
            "stream",
        ),
    ),
    Use("hypercorn.trio.worker_context", "WorkerContext", ("max_requests",), ("terminated",)),
    Use("hypercorn.typing", "ConnectionState"),
    Use("hypercorn.utils", "parse_socket_addr", ("family", "address")),
    Use("hypercorn.utils", "wrap_app", ("app", "wsgi_max_body_size", "mode")),
)
"""Every name imported below, what is called with which parameters, and which attributes
are used; ``tests/test_hypercorn_internals.py`` checks these against the installed
hypercorn, and that this list and the imports below agree."""

try:
    from hypercorn.events import Closed, RawData, Updated
    from hypercorn.protocol import ProtocolWrapper
    from hypercorn.protocol.events import Body, Data, Event
    from hypercorn.protocol.h2 import H2Protocol
    from hypercorn.protocol.h11 import H2CProtocolRequiredError, H2ProtocolAssumedError, H11Protocol
    from hypercorn.trio.lifespan import Lifespan
    from hypercorn.trio.task_group import TaskGroup
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext
    from hypercorn.typing import ConnectionState
    from hypercorn.utils import parse_socket_addr, wrap_app
except ImportError as error:  # an unsupported hypercorn: say which versions fit
    raise ImportError(
        f"the installed hypercorn lacks an internal the daemon is built on ({error}); "
        f"yoi-registryd needs {PIN}: see yoi_registryd/http/hypercorn_internals.py"
    ) from error

__all__ = [
    "PIN",
    "USES",
    "Body",
    "Closed",
    "ConnectionState",
    "Data",
    "Event",
    "H2CProtocolRequiredError",
    "H2Protocol",
    "H2ProtocolAssumedError",
    "H11Protocol",
    "Lifespan",
    "ProtocolWrapper",
    "RawData",
    "TCPServer",
    "TaskGroup",
    "Updated",
    "Use",
    "WorkerContext",
    "parse_socket_addr",
    "wrap_app",
]
