"""`xatm` reports a flag a command does not know with that command's usage, in process."""

from __future__ import annotations

import pytest

from xatm.coordinator.cli.main import main


@pytest.mark.parametrize(
    "argv",
    [
        ["coordinator"],
        ["participant"],
        ["demo"],
        ["bench"],
        ["hash-token", "--name", "a", "--role", "viewer"],
    ],
)
def test_an_unknown_flag_is_reported_by_its_command(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    command = argv[0]
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--no-such-flag"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: xatm {command}"), err
    assert err.splitlines()[-1] == f"xatm {command}: error: unrecognized arguments: --no-such-flag"


def test_an_unknown_flag_before_any_command_is_the_programs() -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--no-such-flag"])
    assert stopped.value.code == 2


def test_hash_token_says_whose_token_and_what_it_may_do(capsys: pytest.CaptureFixture[str]) -> None:
    """A generated token once defaulted to an operator named "NAME"."""
    with pytest.raises(SystemExit) as stopped:
        main(["hash-token", "--generate"])
    assert stopped.value.code == 2
    assert "the following arguments are required: --name, --role" in capsys.readouterr().err
