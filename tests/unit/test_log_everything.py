"""Everything a server process would print by itself goes through the configured log format:
warnings, errors that end a thread, errors nobody could raise (a finalizer's), the event loop's
unhandled errors; and a client that went away is one debug record, not a warning."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import warnings

import pytest

from xatm.participant.runtime import logs


@pytest.fixture
def stderr(capsys: pytest.CaptureFixture[str]) -> pytest.CaptureFixture[str]:
    """The process's stderr, captured (tests/conftest.py puts the logging set-up and hooks back)."""
    return capsys


class _Finalizer:
    def __del__(self) -> None:
        raise RuntimeError("raised in a finalizer")


def _records(captured: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    lines = captured.readouterr().err.splitlines()
    assert lines
    return [json.loads(line) for line in lines]  # a line outside the format fails here


def test_what_python_prints_by_itself_becomes_one_record_each(stderr: pytest.CaptureFixture[str]) -> None:
    logs.setup(json_lines=True)
    warnings.warn("a deprecated thing", UserWarning, stacklevel=1)
    thread = threading.Thread(target=lambda: 1 / 0, name="doomed")
    thread.start()
    thread.join()
    _Finalizer()
    gc.collect()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        logs.quiet_disconnects(loop)
        loop.call_exception_handler({"message": "a callback failed", "exception": KeyError("k")})
        loop.call_exception_handler({"message": "peer gone", "exception": ConnectionResetError(104, "reset")})

    asyncio.run(main())
    records = _records(stderr)
    messages = [str(r["message"]) for r in records]
    assert any("a deprecated thing" in m for m in messages)
    assert any("thread doomed ended by an error" in m for m in messages)
    assert any("_Finalizer" in m for m in messages)
    assert any(m == "a callback failed" for m in messages)
    assert not any("peer gone" in m for m in messages)  # a debug record, below the INFO level


def test_a_client_that_went_away_is_one_debug_record(stderr: pytest.CaptureFixture[str]) -> None:
    logs.setup(json_lines=True, level=logging.DEBUG)
    try:
        raise BrokenPipeError(32, "Broken pipe")
    except BrokenPipeError:
        logging.getLogger("asyncio").error("Fatal write error on socket transport", exc_info=True)
    logging.getLogger("asyncio").warning("socket.send() raised exception.")
    records = _records(stderr)
    assert [(r["level"], "error" in r) for r in records] == [("debug", False), ("debug", False)]
