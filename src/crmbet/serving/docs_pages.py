"""API docs pages served from bundled assets, so they work without internet.

FastAPI's default ``/docs`` and ``/redoc`` pages load Swagger UI and ReDoc
from a public CDN, which a server inside an operator's network often cannot
reach. The ``fastapi-offline`` wheel ships both as static files; this module
serves them from ``/docs/assets`` and builds the two pages around them.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

#: URL prefix of the bundled Swagger UI and ReDoc files.
ASSETS_PATH = "/docs/assets"


def add_offline_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` from bundled assets.

    Build the app with ``docs_url=None`` and ``redoc_url=None`` first, so
    that FastAPI's CDN-based pages are not registered as well.
    """
    assets = files("fastapi_offline") / "static"
    app.mount(ASSETS_PATH, StaticFiles(directory=str(assets)), name="docs-assets")
    title = app.title
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
