"""yoi-registryd: the Runtime Registry daemon of a yoi workspace backend.

The daemon aggregates runtime sources (the local compatibility view of on-disk Worker
metadata, remote runtime processes, embedded runtimes) into one registry state owned by a
single actor, and serves a safe projection of that state over HTTP.
"""

__version__ = "0.1.0"
