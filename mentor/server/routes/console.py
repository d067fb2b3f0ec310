"""The web console: static pages (HTML, JS modules, CSS and a vendored Chart.js) shipped in the
package, so it works offline. The pages hold no data; everything they show comes from the API with
the same token as any client, so they are served without one."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).resolve().parents[1] / "console"
PREFIX = "/console"
router = APIRouter(include_in_schema=False)


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse(PREFIX + "/")


@router.get(PREFIX)
@router.get(PREFIX + "/")
def page() -> FileResponse:
    # no-cache: a new release's page is never mixed with an old cached script
    return FileResponse(ASSETS / "index.html", headers={"Cache-Control": "no-cache"})


def mount(app) -> None:
    app.mount(PREFIX + "/static", StaticFiles(directory=ASSETS), name="console-static")
    app.include_router(router)


def is_public(path: str) -> bool:
    """The console's own files: no data in them, so no token needed to load them."""
    return path == "/" or path == PREFIX or path.startswith(PREFIX + "/")
