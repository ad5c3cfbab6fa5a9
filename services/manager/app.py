"""The manager's FastAPI app: the routers under ``/api/v1`` and the console's static files.

Routers are listed in ``ROUTERS``; another part of the manager adds its own there (the
control side: clusters, jobs, users). Shared state lives on ``app.state``: ``reader``
(DuckDB reads), ``projector`` (rebuilds), ``publisher`` (commands as events) and ``js``
(the JetStream context).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from services.manager import api

CONSOLE: Final = Path(__file__).parent / "console"
ROUTERS: Final[tuple[APIRouter, ...]] = (api.router,)


def create_app(**state: object) -> FastAPI:
    """Build the app; ``state`` becomes ``app.state`` (``reader=``, ``projector=``, …)."""
    app = FastAPI(title="Damselfly manager", version="1")
    for name, value in state.items():
        setattr(app.state, name, value)
    for router in ROUTERS:
        app.include_router(router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(CONSOLE / "index.html")

    app.mount("/console", StaticFiles(directory=CONSOLE), name="console")
    return app
