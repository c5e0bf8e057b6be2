"""The ``xatm`` command: coordinator, participant agent, demo, benchmark."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from xatm.coordinator.settings import Settings, SettingsError, resolve
from xatm.participant.failpoints import CATALOGUE
from xatm.participant.runtime import logs
from xatm.participant.runtime.config import add_flags

__all__ = ["main"]


def _coordinator(args: argparse.Namespace) -> int:
    try:
        settings = resolve(vars(args))
    except SettingsError as err:
        print(f"xatm coordinator: {err}", file=sys.stderr)
        return 2
    logs.setup(json_lines=settings.log_json)
    if args.repair_wal:
        from xatm.coordinator.txlog.file import repair
        from xatm.coordinator.txlog.interface import LogLocked

        try:
            print(repair(settings.data_dir))
        except (OSError, LogLocked) as err:  # no log there, the lock held, a failing disk
            print(f"xatm coordinator: --repair-wal: {err}", file=sys.stderr)
            return 1
        return 0
    from xatm.coordinator.app import run
    from xatm.coordinator.txlog.interface import LogCorrupt, LogLocked, LogMissing, LogStopped

    try:
        return asyncio.run(run(settings))
    except LogMissing as err:
        print(
            f"xatm coordinator: the write-ahead log is missing: {err}. Starting would presume abort for "
            "every decision it held, so nothing was started or changed. Restore the missing files from "
            'a backup, or see docs/operations.md ("The log is missing") for starting over safely.',
            file=sys.stderr,
        )
        return 1
    except LogStopped as err:
        print(
            f"xatm coordinator: cannot start: {err.reason}. Free space or fix the disk, then start again.",
            file=sys.stderr,
        )
        return 1
    except LogCorrupt as err:
        print(
            f"xatm coordinator: the write-ahead log is damaged before its end: {err}. Nothing was changed. "
            "Copy the data dir, then run `xatm coordinator --repair-wal` to save the damaged files and "
            "truncate at the damage.",
            file=sys.stderr,
        )
        return 1
    except SettingsError as err:  # found at start-up: the data dir's node id, the TLS files
        print(f"xatm coordinator: {err}", file=sys.stderr)
        return 2
    except (OSError, LogLocked, RuntimeError, ValueError) as err:
        print(f"xatm coordinator: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xatm", description="xatm: XA transaction manager for microservices"
    )
    parser.add_argument("--list-failpoints", action="store_true", help="print every failpoint name and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    coord = sub.add_parser(
        "coordinator",
        help="run the coordinator",
        description="Run the xatm coordinator. Every flag also comes from XATM_<FLAG> or from the "
        "[coordinator] table (or top level) of the --config file; flags win over env, env over the file.",
    )
    coord.add_argument("--config", default=None, metavar="FILE", help="TOML config file (env XATM_CONFIG)")
    coord.add_argument(
        "--repair-wal", action="store_true", help="back up and truncate a damaged write-ahead log, then exit"
    )
    add_flags(coord, Settings)
    coord.set_defaults(func=_coordinator)

    from xatm.participant.agent.server import add_parser as add_participant

    add_participant(sub)

    from xatm.coordinator.tools.demo import add_parser as add_demo

    add_demo(sub)

    from xatm.coordinator.tools.bench import add_parser as add_bench

    add_bench(sub)

    from xatm.coordinator.server.auth import add_parser as add_hash_token

    add_hash_token(sub)
    for command in sub.choices.values():
        # So that a flag a command does not know is reported with that command's usage.
        command.set_defaults(command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.list_failpoints:
        for name in CATALOGUE:
            print(name)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.captureWarnings(True)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
