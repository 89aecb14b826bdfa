"""Worker runtimes that live inside the daemon's process (the ``embedded`` source kind).

:mod:`~yoi_registryd.runtimes.protocol` is the contract a third-party runtime implements;
:class:`MemoryRuntime` is the built-in in-memory runtime and :class:`DemoRuntime` the
self-animating population behind ``yoi-registryd --demo``.
"""

from yoi_registryd.runtimes.demo import DemoRuntime
from yoi_registryd.runtimes.memory import MemoryRuntime
from yoi_registryd.runtimes.protocol import (
    EmbeddedRuntime,
    EmbeddedRuntimeError,
    InputAck,
    InputRejected,
    Intent,
    LifecycleAck,
    Profile,
    RuntimeChange,
    RuntimeStopped,
    RuntimeSummary,
    SubscriptionOverflow,
    WorkerNotFound,
    WorkerNotRunning,
    WorkerStatus,
    WorkerSummary,
)

__all__ = [
    "DemoRuntime",
    "EmbeddedRuntime",
    "EmbeddedRuntimeError",
    "InputAck",
    "InputRejected",
    "Intent",
    "LifecycleAck",
    "MemoryRuntime",
    "Profile",
    "RuntimeChange",
    "RuntimeStopped",
    "RuntimeSummary",
    "SubscriptionOverflow",
    "WorkerNotFound",
    "WorkerNotRunning",
    "WorkerStatus",
    "WorkerSummary",
]
