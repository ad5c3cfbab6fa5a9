"""The manager's FastAPI app: the routers under ``/api/v1`` and the console's static files.

Routers are listed in ``ROUTERS``; another part of the manager adds its own there (the
control side: clusters, jobs, users). Shared state lives on ``app.state``: ``reader``
(DuckDB reads), ``projector`` (rebuilds), ``publisher`` (commands as events) and ``js``
(the JetStream context). ``/metrics`` is Prometheus' (``metrics.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from damselfly.services.manager import api
from damselfly.services.manager.control import service as control
from damselfly.services.manager.metrics import manager_registry

CONSOLE: Final = Path(__file__).parent / "console"
ROUTERS: Final[tuple[APIRouter, ...]] = (api.router, api.open_router, *control.ROUTERS)


def create_app(**state: object) -> FastAPI:
    """Build the app; ``state`` becomes ``app.state`` (``reader=``, ``projector=``, …)."""
    # /docs is served from the swagger-ui-bundle wheel: the default page loads from a CDN,
    # which a machine without internet access cannot reach.
    app = FastAPI(title="Damselfly manager", version="1", docs_url=None)
    for name, value in state.items():
        setattr(app.state, name, value)
    for router in ROUTERS:
        app.include_router(router)

    # /healthy is Dragonfly's manager's own health route: Harbor's preheat provider probes it
    # ("test connection") before anything else, and accepts any 2xx.
    @app.get("/healthz", include_in_schema=False)
    @app.get("/healthy", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    registry = manager_registry(getattr(app.state, "projector", None),
                                getattr(app.state, "publisher", None))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(CONSOLE / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Damselfly manager API",
                                   swagger_js_url="/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/swagger/swagger-ui.css",
                                   swagger_favicon_url="/swagger/favicon-32x32.png")

    app.mount("/console", StaticFiles(directory=CONSOLE), name="console")
    app.mount("/swagger", StaticFiles(directory=swagger_ui_path), name="swagger")
    return app
