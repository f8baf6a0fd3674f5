"""/docs (Swagger UI) and /redoc render in a real headless Chromium with every request off the service blocked.

The assets come from the installed fastapi-offline package and are served by the service itself; a CDN link would
leave a blank page here. Skips, saying why, where Chromium or Playwright is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LiveServer

CHROMIUM = os.environ.get("EMOTION_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"Chromium is missing ({CHROMIUM}); install it with `apt-get install -y chromium`", allow_module_level=True
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def offline_page(browser, live_server: LiveServer) -> Iterator[tuple[object, list[str]]]:
    """A page that may reach the service on loopback and nothing else; yields it and the blocked requests."""
    blocked: list[tuple[str, str]] = []  # (resource type, URL)
    context = browser.new_context()

    def only_the_service(route) -> None:
        url = route.request.url
        if url.startswith(live_server.url + "/") or url.startswith("data:"):
            route.continue_()
        else:
            blocked.append((route.request.resource_type, url))
            route.abort("internetdisconnected")

    context.route("**/*", only_the_service)
    page = context.new_page()
    try:
        yield page, blocked
    finally:
        context.close()


def test_swagger_ui_renders_the_operations_offline(offline_page, live_server: LiveServer) -> None:
    page, blocked = offline_page
    page.goto(live_server.url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=20_000)
    paths = {text.strip().replace("\u200b", "") for text in page.locator(".opblock-summary-path").all_inner_texts()}
    assert {"/predict", "/predict/video", "/model", "/healthz", "/readyz", "/metrics"} <= paths, paths
    assert page.locator(".opblock-post").count() >= 2
    # Expanding an operation shows its response model, rendered from /openapi.json by the local Swagger UI.
    page.locator(".opblock-post .opblock-summary").first.click()
    page.wait_for_selector(".opblock-body .responses-wrapper", timeout=10_000)
    assert blocked == [], blocked


def test_redoc_renders_offline(offline_page, live_server: LiveServer) -> None:
    page, blocked = offline_page
    page.goto(live_server.url + "/redoc")
    page.wait_for_selector("h2:has-text('Detect every face in an image')", timeout=20_000)
    assert page.get_by_text("/predict/video").count() >= 1
    # ReDoc's own footer logo ("API docs by Redocly") is an <img> from its CDN: offline it is just not drawn.
    # Everything that makes the page (scripts, styles, the schema) came from the service.
    assert [(kind, url) for kind, url in blocked if kind != "image"] == [], blocked
