"""Auth files in process: ``xatm hash-token`` writes an entry the coordinator accepts, and a bad
auth file is refused with a reason.

Tokens and roles against a real coordinator are in tests/system/test_admin_auth.py.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pytest

from xatm.coordinator.server.auth import Authenticator, AuthFileError, Role, add_parser


def test_hash_token_makes_an_entry_the_coordinator_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    args = parser.parse_args(["hash-token", "--name", "alice", "--role", "viewer"])
    assert args.func(args) == 0
    entry = capsys.readouterr().out
    assert "s3cret" not in entry
    (tmp_path / "tokens.toml").write_text(entry)
    principal = Authenticator.load(tmp_path / "tokens.toml").authenticate("s3cret")
    assert (principal.name, principal.role) == ("alice", Role.VIEWER)

    args = parser.parse_args(["hash-token", "--generate", "--name", "ops", "--role", "operator"])
    assert args.func(args) == 0
    comment, *toml = capsys.readouterr().out.splitlines()
    (tmp_path / "generated.toml").write_text("\n".join(toml))
    assert (
        Authenticator.load(tmp_path / "generated.toml").authenticate(comment.rsplit(" ", 1)[1]).name == "ops"
    )


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("", "at least one [[tokens]]"),
        ('[[tokens]]\nname = "a"\nrole = "admin"\nsha256 = "' + "0" * 64 + '"', "role must be one of"),
        ('[[tokens]]\nname = "a"\nrole = "viewer"\nsha256 = "plain-token"', "64 lowercase hex"),
        ('[[tokens]]\nname = "a"\nrole = "viewer"\ntoken = "x"', "exactly the keys"),
        ("[[tokens]\n", "auth file"),
    ],
)
def test_bad_auth_files_are_refused_with_a_reason(tmp_path: Path, content: str, complaint: str) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(content)
    with pytest.raises(AuthFileError, match=complaint.replace("[", r"\[")):
        Authenticator.load(path)
