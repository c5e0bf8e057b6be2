"""Optional backends live in extras; a missing one is a one-line error naming the install command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from xatm.participant.errors import FailedPreconditionError

__all__ = ["MissingExtra", "needs_extra"]


class MissingExtra(FailedPreconditionError, ImportError):
    """A module of an optional extra is not installed; the message says how to install it."""


@contextmanager
def needs_extra(extra: str, what: str) -> Iterator[None]:
    """Turn a missing third-party module imported inside the block into ``MissingExtra``.

    ``extra`` is the name in ``pip install 'xatm[EXTRA]'``; ``what`` the feature that needs it.
    Raises MissingExtra (status FAILED_PRECONDITION).
    """
    try:
        yield
    except ModuleNotFoundError as err:
        top = (err.name or "xatm").split(".")[0]
        if top == "xatm":
            raise  # one of ours: a bug, not a missing install
        raise MissingExtra(
            f"{what} needs the {extra} extra ({top} is not installed): pip install 'xatm[{extra}]'"
        ) from None
