"""Secret-bearing values: a wrapper that never prints, and bearer-token loading.

Redaction is structural: a value that must never reach a response or a log line (a runtime
endpoint URL, a bearer token) is held in a :class:`Secret` from the moment it is read, so
``repr``, ``str``, f-strings, exceptions and msgspec's struct ``repr`` all show
``<redacted>``. Only the code that really needs the value calls :meth:`Secret.reveal`.

Tokens are never written inline in the configuration: the config names where the token
lives (a file, an environment variable, or a systemd credential) and the source loads it
when it starts, and again after the runtime refused it, so a rotated token is picked up.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final, NoReturn

REDACTED: Final = "<redacted>"
MAX_TOKEN_FILE_BYTES: Final = 64 * 1024
CREDENTIALS_DIRECTORY_ENV: Final = "CREDENTIALS_DIRECTORY"


class Secret:
    """A string that prints as ``<redacted>`` everywhere; ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled")


class TokenUnavailable(Exception):
    """The token could not be loaded; the message names the config key, never a value."""


def _check_token(raw: bytes, where: str) -> Secret:
    text = raw.strip()
    if not text:
        raise TokenUnavailable(f"{where} is empty")
    if any(b < 0x21 or b > 0x7E for b in text):
        raise TokenUnavailable(f"{where} holds characters a bearer token cannot contain")
    return Secret(text.decode("ascii"))


def read_limited(path: Path, where: str, limit: int, error: type[Exception]) -> bytes:
    """The bytes of a secret-bearing file, at most ``limit``; ``error`` naming ``where``
    (never the content) when it cannot be read."""
    try:
        with path.open("rb") as f:
            raw = f.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{where} does not exist") from None
    except PermissionError:
        raise error(f"{where} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise error(f"{where} is a directory") from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else "I/O error"
        raise error(f"{where} could not be read ({reason})") from None
    if len(raw) > limit:
        raise error(f"{where} is larger than {limit} bytes")
    return raw


def credential_path(
    name: str, where: str, environ: Mapping[str, str], error: type[Exception]
) -> Path:
    """The file of systemd credential ``name``: ``$CREDENTIALS_DIRECTORY/<name>``."""
    directory = environ.get(CREDENTIALS_DIRECTORY_ENV)
    if not directory:
        raise error(f"{where} needs systemd's ${CREDENTIALS_DIRECTORY_ENV}, which is not set")
    return Path(directory) / name


def _read_token_file(path: Path, where: str) -> Secret:
    return _check_token(read_limited(path, where, MAX_TOKEN_FILE_BYTES, TokenUnavailable), where)


def load_token(
    *,
    token_file: str | None = None,
    token_env: str | None = None,
    token_credential: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Secret | None:
    """Load the bearer token from the one place the config names (None: no token).

    Raises :class:`TokenUnavailable` with a message that names the config key only, so it
    is safe to serve as a diagnostic.
    """
    env = os.environ if environ is None else environ
    if token_file is not None:
        return _read_token_file(Path(token_file), "token_file")
    if token_env is not None:
        value = env.get(token_env)
        if value is None:
            raise TokenUnavailable("the environment variable named by token_env is not set")
        return _check_token(value.encode("utf-8", "surrogateescape"), "token_env")
    if token_credential is not None:
        path = credential_path(token_credential, "token_credential", env, TokenUnavailable)
        return _read_token_file(path, "token_credential")
    return None
