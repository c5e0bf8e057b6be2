"""The web console: static pages served at ``/console`` by the coordinator's HTTP port.

Plain HTML, CSS and JavaScript shipped in this package (no build step). The pages hold no data:
the browser signs in with a bearer token, keeps it for the tab only (sessionStorage), and calls
the REST admin API with it, so the console can do exactly what the token's role allows. The
pages and the API share one origin, so the console works unchanged behind TLS.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["CONSOLE_PATH", "mount_console"]

CONSOLE_PATH = "/console"
#: Only this origin's own files and API: no inline script, no third-party content, no framing.
_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class _ConsoleFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Content-Security-Policy"] = _POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response


def mount_console(app: FastAPI) -> None:
    """Serve the console's files under CONSOLE_PATH (``/console/`` is its sign-in page)."""
    static = Path(str(files(__name__) / "static"))

    def to_console(request: Request) -> Response:
        # A relative Location: right behind a TLS-terminating proxy too (the framework's own
        # slash redirect names the scheme and host this process saw).
        return RedirectResponse(CONSOLE_PATH + "/")

    app.add_route(CONSOLE_PATH, to_console, include_in_schema=False)
    app.mount(CONSOLE_PATH, _ConsoleFiles(directory=static, html=True), name="console")
