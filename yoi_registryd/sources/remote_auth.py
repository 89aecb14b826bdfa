"""How a remote source proves who it is to its runtime: a static bearer token, or minted
capability tokens (``auth = "bearer" | "capability"`` in its configuration).

The credentials are loaded when the source starts (blocking file reads go to a thread) and
again after the runtime refused them, so a rotated token or key is picked up without a
restart. Every request asks for its ``Authorization`` value naming the one permission it
needs (contract-v2 section 4.1); a bearer token ignores it, a capability token carries
exactly that permission. The WebSocket subscription's handshake asks the same way.

Failures name the configuration key only (``token_file``, ``signing_key_file``...), never a
path or a value: they become diagnostics that are served.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from yoi_registryd.capability import KeyUnavailable, TokenMinter, load_signing_key
from yoi_registryd.config import ConfigError, RemoteSourceConfig, SourceConfig
from yoi_registryd.secrets import Secret, TokenUnavailable, load_token
from yoi_registryd.sources.remote_client import KEY_UNAVAILABLE, TOKEN_UNAVAILABLE, RemoteFailure


class RemoteCredentials:
    """One remote source's credentials; :meth:`load` before the first request."""

    def __init__(self, config: RemoteSourceConfig) -> None:
        self._config = config
        self._bearer: Secret | None = None
        """``Bearer <static token>``, built once per load."""
        self._minter: TokenMinter | None = None
        self._headers: dict[str, tuple[Secret, Secret]] = {}
        """Per permission: the last minted token and its header value."""
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    async def load(self) -> None:
        """Load the token or key unless loaded; :class:`RemoteFailure` if it fails."""
        if self._loaded:
            return
        config = self._config
        if config.auth == "capability":
            self._minter = await trio.to_thread.run_sync(self._load_minter)
            self._headers.clear()
        else:
            try:
                token = await trio.to_thread.run_sync(
                    lambda: load_token(
                        token_file=config.token_file,
                        token_env=config.token_env,
                        token_credential=config.token_credential,
                    )
                )
            except TokenUnavailable as exc:
                raise RemoteFailure(TOKEN_UNAVAILABLE, reason=str(exc)) from None
            self._bearer = None if token is None else Secret(f"Bearer {token.reveal()}")
        self._loaded = True

    def _load_minter(self) -> TokenMinter:
        config = self._config
        where = "signing_key_file" if config.signing_key_file else "signing_key_credential"
        try:
            key = load_signing_key(
                key_file=config.signing_key_file,
                key_credential=config.signing_key_credential,
                where=where,
            )
        except KeyUnavailable as exc:
            raise RemoteFailure(KEY_UNAVAILABLE, reason=str(exc)) from None
        assert config.server_id is not None and config.workspace_id is not None, "validated"
        return TokenMinter(
            key,
            server_id=config.server_id,
            runtime_id=config.runtime_id,
            workspace_id=config.workspace_id,
            ttl=config.token_ttl.total_seconds(),
            reuse=config.token_reuse.total_seconds(),
        )

    @property
    def refusal_hint(self) -> str:
        """What to check when the runtime answers 401 (safe: names config keys only)."""
        if self._config.auth == "capability":
            return (
                "check that the runtime trusts server_id with the signing key's public key, "
                "that its identity is runtime_id, and that both clocks are right"
            )
        return "check that the bearer token is the runtime's"

    def invalidate(self) -> None:
        """The runtime refused us (401/403): load again before the next request."""
        self._loaded = False

    def authorization(self, permission: str) -> Secret | None:
        """The ``Authorization`` header value for a request needing ``permission``.

        The same object for as long as the value stays the same (a static token, a
        capability token being reused), so a caller may keep a request built with it and
        rebuild only when this returns another object.
        """
        if self._minter is None:
            return self._bearer
        token = self._minter.token(permission)
        cached = self._headers.get(permission)
        if cached is None or cached[0] is not token:
            cached = self._headers[permission] = (token, Secret(f"Bearer {token.reveal()}"))
        return cached[1]


def check_signing_keys(sources: Sequence[SourceConfig], section: str = "sources") -> None:
    """Read and parse the signing key of every ``auth = "capability"`` source, once per
    key: a key that cannot be is a :class:`ConfigError` at start and on reload, naming
    the source and the key's file path or credential name (never its content)."""
    problems: list[str] = []
    checked: dict[tuple[str | None, str | None], str | None] = {}
    for i, src in enumerate(sources):
        if not isinstance(src, RemoteSourceConfig) or src.auth != "capability":
            continue
        where = (src.signing_key_file, src.signing_key_credential)
        if where not in checked:
            try:
                load_signing_key(key_file=where[0], key_credential=where[1])
                checked[where] = None
            except KeyUnavailable as exc:
                checked[where] = str(exc)
        if (problem := checked[where]) is not None:
            key = "signing_key_file" if src.signing_key_file else "signing_key_credential"
            problems.append(f"{section}[{i}].{key}: {problem}")
    if problems:
        raise ConfigError(problems)
