"""Swagger UI in a real headless browser (marker `browser`, not in the default run).

Chromium from the distribution, driven by Playwright (`scripts/setup_browser.sh` installs both; Playwright's
own browsers are never downloaded). Opens /docs without a key, tries /generate and gets 401, authorizes
with the key through Swagger's Authorize button (the document's x-api-key scheme), tries again and gets 200
with generated text. Requests to anywhere but the server are blocked.

    scripts/setup_browser.sh && scripts/test.sh -m browser
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import API_KEY, Server

pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BODY = {"prompt": "Once upon a time", "max_new_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser test needs Playwright: run scripts/setup_browser.sh")
    if not CHROMIUM.is_file():
        pytest.fail(f"the browser test needs Chromium at {CHROMIUM}: run scripts/setup_browser.sh (or set CHROMIUM)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


def shown_status(operation: Any) -> Any:
    """The status Swagger UI shows for the last try of `operation`."""
    return operation.locator(".live-responses-table tr.response td.response-col_status")


def execute(page: Any) -> Any:
    """Press Execute on the open /generate operation; the browser's response to it."""
    with page.expect_response(lambda r: r.url.endswith("/generate") and r.request.method == "POST") as answer:
        page.locator(".opblock-post:has([data-path='/generate']) button.execute").click()
    return answer.value


def test_swagger_ui_try_it_out_401_then_authorize_then_200(browser: Any, server: Server):
    from playwright.sync_api import expect

    page = browser.new_page()
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server.url) else route.abort())
    page.goto(server.url + "/docs")
    generate = page.locator(".opblock-post:has([data-path='/generate'])")
    generate.locator(".opblock-summary").first.click()  # expand the operation
    generate.locator("button.try-out__btn").click()
    generate.locator("textarea.body-param__text").fill(json.dumps(BODY))

    refused = execute(page)
    assert refused.status == 401
    assert refused.json()["error"]["message"].startswith("missing API key")
    expect(shown_status(generate)).to_have_text("401")

    page.locator("button.authorize").first.click()
    dialog = page.locator(".dialog-ux")
    api_key_form = dialog.locator(".auth-container", has_text="ApiKeyAuth")
    api_key_form.locator("input").fill(API_KEY)
    api_key_form.locator("button.authorize").click()
    expect(api_key_form).to_contain_text("Authorized")
    api_key_form.locator("button.btn-done").click()

    answered = execute(page)
    assert answered.status == 200
    assert answered.request.headers.get("x-api-key") == API_KEY
    body = answered.json()
    assert body["completion"] and body["generated_text"].startswith(BODY["prompt"])
    expect(shown_status(generate)).to_have_text("200")
    expect(generate.locator(".live-responses-table tr.response td.response-col_description")).to_contain_text(
        "generated_text"
    )
    page.close()
