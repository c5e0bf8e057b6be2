"""``xatm bench`` run in this process, as its command line would run it, for the bench tests."""

from __future__ import annotations

import argparse
import contextlib
import io

from xatm.coordinator.tools.bench import add_parser


def bench(*argv: str) -> tuple[int, str]:
    """Run ``xatm bench ARGV`` the way the ``xatm`` command registers it; (exit code, stdout)."""
    parser = argparse.ArgumentParser(prog="xatm")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", *argv])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.func(args)
    return code, out.getvalue()
