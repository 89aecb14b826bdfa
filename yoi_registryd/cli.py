"""Command line: ``yoi-registryd [serve]``, ``check-config [PATH]``, ``status``, ``keygen PATH``,
``audit verify FILE...``, ``version``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from yoi_registryd import __version__, audit_verify, status_cli
from yoi_registryd.capability import SigningKey, write_key_file
from yoi_registryd.config import (
    Config,
    ConfigError,
    load_config,
    resolve_config_path,
    validate_config,
)
from yoi_registryd.logs import setup_logging
from yoi_registryd.preflight import preflight
from yoi_registryd.systemd import Notifier, SocketActivationError, watchdog_interval

log = logging.getLogger("yoi_registryd")


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes; accepted before or after the command's name.

    On a subcommand they default to "not given" (``SUPPRESS``) so that ``--demo serve``
    and ``serve --demo`` both work and neither position overrides the other with a default.
    """
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default,
        help="config file (default: $YOI_REGISTRYD_CONFIG, else /etc/yoi-registryd/config.toml "
        "if it exists, else built-in defaults)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="also run an embedded demo runtime whose workers change state every few seconds",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=default,
        help="override logging.level from the config",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yoi-registryd",
        description="Runtime Registry daemon for yoi workspaces.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub.add_parser("serve", parents=[common], help="run the daemon (the default)")
    check = sub.add_parser(
        "check-config", parents=[common], help="validate a config file and exit 0 or 1"
    )
    check.add_argument("path", nargs="?", help="the file to check (default: as --config)")
    sub.add_parser("version", help="print the version")
    keygen = sub.add_parser(
        "keygen",
        help="write a new Ed25519 signing key for capability tokens; print its public key",
    )
    keygen.add_argument("path", help="the private key file to create (mode 0600, never replaced)")
    keygen.add_argument(
        "--server-id",
        help="the registry's server id, to print a [[trusted_servers]] entry for the runtimes",
    )
    status = sub.add_parser(
        "status",
        parents=[common],
        help="ask the running daemon how it is; exit 0 ready, 1 not ready, "
        "2 unreachable, 3 refused (token)",
    )
    status_cli.add_arguments(status)
    audit = sub.add_parser("audit", help="work with the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="check the hash chain (audit.chain) of audit files, oldest first; exit 0 intact, "
        "1 a record changed, removed or reordered, 2 unreadable",
    )
    verify.add_argument("files", nargs="+", metavar="FILE")
    return parser


def status(args: argparse.Namespace) -> int:
    try:
        token = status_cli.resolve_token(args.token_file, args.token_env)
    except ValueError as exc:
        print(f"yoi-registryd status: {exc}", file=sys.stderr)
        return status_cli.EXIT_USAGE
    address = args.address
    if address is None:
        try:
            config, _ = _load(args.config)
        except ConfigError as exc:
            _print_problems(exc)
            return status_cli.EXIT_USAGE
        address = config.server.listen[0]
    return status_cli.show_status(
        address, workers=args.workers, timeout=args.timeout, token=token, as_json=args.json
    )


def _print_problems(exc: ConfigError) -> None:
    where = f"{exc.source}: " if exc.source else ""
    for problem in exc.problems:
        print(f"{where}{problem}", file=sys.stderr)


def _load(path_arg: str | None) -> tuple[Config, str]:
    path = resolve_config_path(path_arg)
    if path is None:
        return Config(), "built-in defaults"
    return load_config(path), str(path)


def check_config(path_arg: str | None, demo: bool = False) -> int:
    """Every problem of the file in one pass: its shape, the rules between keys, and what
    can be known without starting (``preflight``); with ``--demo``, as ``--demo`` runs it."""
    try:
        config, where = _load(path_arg)
    except ConfigError as exc:
        _print_problems(exc)
        return 1
    problems = preflight(config)
    if problems:
        _print_problems(ConfigError(problems, where))
    if demo:
        try:
            config = _with_demo(config)
        except ConfigError as exc:
            _print_problems(exc)
            return 1
    if problems:
        return 1
    audit = config.audit
    sink = str(audit.resolved_path()) if audit.sink == "file" else audit.sink
    print(f"{where}: OK ({len(config.sources)} sources; audit records go to {sink})")
    return 0


def keygen(path: str, server_id: str | None) -> int:
    """Write a new signing key to ``path`` (0600) and print its public key string on stdout
    (and, on stderr, how a runtime trusts it)."""
    key = SigningKey.generate()
    try:
        write_key_file(Path(path), key)
    except FileExistsError:
        print(f"{path} already exists: not replaced", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 1
    public = key.public_key_string()
    print(public)
    entry = (
        f'[[trusted_servers]]\nserver_id = "{server_id or "<server_id>"}"\npublic_key = "{public}"'
    )
    print(
        f"wrote the private key to {path} (mode 0600). Add the public key to the "
        "trusted servers of each runtime (its auth.toml):\n" + entry,
        file=sys.stderr,
    )
    return 0


def _with_demo(config: Config) -> Config:
    """``--demo``: the configuration's sources plus the embedded demo runtime."""
    from yoi_registryd.runtimes.demo import demo_source_config

    demo = msgspec.structs.replace(config, sources=[*config.sources, demo_source_config()])
    problems = validate_config(demo)
    if problems:
        key = f"sources[{len(config.sources)}]"
        named = [p.replace(f"{key}.", "the demo runtime's ") for p in problems]
        raise ConfigError(named, "--demo")
    return demo


def serve(path_arg: str | None, log_level: str | None, demo: bool = False) -> int:
    try:
        config, where = _load(path_arg)
        if demo:
            config = _with_demo(config)
            where += " plus the demo runtime"
    except ConfigError as exc:
        setup_logging(log_level or "info")
        for problem in exc.problems:
            log.error("invalid configuration %s: %s", exc.source or "", problem)
        return 1
    setup_logging(log_level or config.logging.level)
    log.info("yoi-registryd %s starting with %s", __version__, where)
    try:
        trio.run(_serve, config, resolve_config_path(path_arg), log_level, demo)
    except (OSError, SocketActivationError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    except ConfigError as exc:  # found while starting: token files, plugins, the audit file
        for problem in exc.problems:
            log.error("cannot start: %s: %s", where, problem)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


async def _serve(config: Config, path: Path | None, log_level: str | None, demo: bool) -> None:
    # Imported here: the HTTP stack (quart, hypercorn) is most of the start-up time of a
    # command, and only serving needs it (check-config, status, audit verify start faster).
    from yoi_registryd.daemon import Daemon, activated_listeners

    listeners = activated_listeners()
    daemon = Daemon(
        config,
        config_path=path,
        log_level_override=log_level,
        notifier=Notifier.from_environment(),
        watchdog_interval=watchdog_interval(),
        socket_activated=listeners is not None,
        config_transform=_with_demo if demo else None,
    )
    await daemon.run(listeners, handle_signals=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    if args.command == "check-config":
        return check_config(args.path or args.config, args.demo)
    if args.command == "status":
        return status(args)
    if args.command == "keygen":
        return keygen(args.path, args.server_id)
    if args.command == "audit":
        return audit_verify.main(args.files)
    return serve(args.config, args.log_level, args.demo)
