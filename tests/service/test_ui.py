"""``GET /ui`` in a real browser: headless Chromium (Debian's package) driven by Playwright.

The app (the module's catalogue, auth on) is served over HTTP by a werkzeug server thread. The
browser enters the admin key and a user with events, waits for the explained recommendations,
the recent events and the drift plot, clicks an item and waits until the list changes. The
screenshot lands in test-artifacts/ui.png. Playwright's own browser download does not work
here, so it launches /usr/bin/chromium; without it the test fails (``make install`` installs it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import make_server

from tests.service.conftest import admin_client

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
USER = "ui-user"
TIMEOUT_MS = 20_000


def test_ui_page_is_public_and_static(app: Flask):
    client = app.test_client()  # no key
    page = client.get("/ui")
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert 'src="static/ui.js"' in text and "http" not in text.replace("http://www.w3.org", ""), (
        "the page must not load anything from elsewhere"
    )
    script = client.get("/static/ui.js")
    assert script.status_code == 200 and "/v1/events" in script.get_data(as_text=True)
    assert "http://" not in script.get_data(as_text=True).replace("http://www.w3.org", "")
    assert client.get("/v1/users/x").status_code == 401  # the API behind it is not


@pytest.fixture(scope="module")
def base_url(app: Flask) -> Iterator[str]:
    """The app over real HTTP on a free port, with a user who read three space items."""
    now = time.time()
    events = [
        {
            "id": f"ui-{n}",
            "user_id": USER,
            "item_id": f"space-{n}",
            "type": "view",
            "timestamp": now - 3600 * (3 - n),
        }
        for n in range(3)
    ]
    answer = admin_client(app).post("/v1/events", json={"events": events}).get_json()
    assert answer["accepted"] == 3, answer
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run `make install` (it is in the dev extra)")
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the /ui test needs Debian's chromium package "
            "(`make install` installs it, or `apt-get install -y chromium`)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def test_ui_shows_a_user_and_reacts_to_a_click(app: Flask, base_url: str, browser):
    errors: list[str] = app.config["SERVER_ERRORS"]
    errors.clear()
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    console: list[str] = []
    page.on("pageerror", lambda exc: console.append(f"page error: {exc}"))
    page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
    try:
        page.goto(f"{base_url}/ui")
        page.fill("#api-key", app.config["ADMIN_KEY"])
        page.fill("#user-id", USER)
        page.click("#load")
        page.wait_for_selector("#recs button.item")
        assert page.text_content("#status") == f"showing {USER}", page.text_content("#status")

        # Recommendations with explanations, the three events, a dot per event in the plot.
        first = page.get_attribute("#recs", "data-items").split(",")
        assert len(first) == 10 and not {f"space-{n}" for n in range(3)} & set(first)
        assert page.locator("#recs .because").count() == 10
        assert "because of" in page.text_content("#recs .because")
        assert page.locator("#events li").count() == 3
        assert page.locator("#drift-plot circle.event-dot").count() == 3
        assert page.locator("#drift-plot circle.event-dot[fill='#fff']").count() == 0

        # Click the top item: an event is sent and the list changes under the user's eyes.
        recomm_id = page.get_attribute("#recs", "data-recomm-id")
        clicked = first[0]
        page.click(f"#recs button.item[data-item-id='{clicked}']")
        page.wait_for_function(
            "before => document.getElementById('recs').dataset.items !== before",
            arg=",".join(first),
        )
        page.wait_for_selector("#status:text('recommendations refreshed')")
        after = page.get_attribute("#recs", "data-items").split(",")
        assert after != first and clicked not in after
        assert page.get_attribute("#recs", "data-recomm-id") != recomm_id
        assert page.locator("#events li").count() == 4
        assert clicked in page.text_content("#events li:first-child")
        assert page.locator("#drift-plot circle.event-dot").count() == 4
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "ui.png"), full_page=True)

        # The key is remembered for the next visit.
        page.reload()
        assert page.input_value("#api-key") == app.config["ADMIN_KEY"]
        assert page.input_value("#user-id") == USER
    finally:
        page.close()
    assert not console, console
    assert not errors, f"server errors (a 5xx is always a bug): {errors}"

    # The click reached the store as a click from that recommendation.
    summary = admin_client(app).get(f"/v1/users/{USER}").get_json()
    assert summary["event_count"] == 4
    assert summary["recent_items"][0] == {
        **summary["recent_items"][0],
        "id": clicked,
        "type": "click",
    }
