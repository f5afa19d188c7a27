"""The dashboard as an operator uses it, in a real browser: Debian's Chromium, headless,
driven by Playwright, against the session's real Redis and workers and a real
`treadle orchestrator --port` process serving the page and the HTTP API.

The system browser is used, never one Playwright downloads. Without /usr/bin/chromium
the browser tests are skipped, saying why, except under CI=true, where they fail:
`.ci/run` installs Debian's chromium package.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from ops.browser import CHROMIUM, CHROMIUM_ARGS
from orchestrator.stack import Stack
from orchestrator.states import WORKFLOW_FINAL
from tests.conftest import wait_until
from tests.redis_nodes import free_port
from tests.tasks import fix, open_gate

pytestmark = pytest.mark.e2e

TOKEN = "dashboard-test-token-0123456789"
TOKEN_KEY = "treadle.api-token"  # where the page keeps the token (dashboard.js)
# Every wait on the page has this deadline: generous for a loaded 2-core machine, and
# each one ends as soon as its condition holds.
DEADLINE_MS = 30_000


# -- fixtures -------------------------------------------------------------------------


def _answers(http: httpx.Client) -> bool:
    try:
        return http.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def api_url(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second orchestrator process on the session's stack, serving the HTTP API (and
    with it the dashboard) with a token."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("dashboard") / "orchestrator-api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "orchestrator", "--port", str(port)],
            env={**stack.env(), "TREADLE_API_TOKEN": TOKEN},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=url, timeout=10) as http:
                wait_until(
                    lambda: process.poll() is not None or _answers(http),
                    60,
                    "the API to serve",
                )
            assert process.poll() is None, log_path.read_text()
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    reason = f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium()
    expect.set_options(timeout=DEADLINE_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage); a script error on the page fails the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(DEADLINE_MS)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    if errors:
        pytest.fail(f"script errors on the page: {errors}")


# -- helpers --------------------------------------------------------------------------


def api(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)


def submit(url: str, spec: dict[str, Any]) -> str:
    with api(url) as http:
        created = http.post("/workflows", json=spec)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def ended(url: str, workflow_id: str) -> dict[str, Any]:
    with api(url) as http:

        def final() -> dict[str, Any] | None:
            status: dict[str, Any] = http.get(f"/workflows/{workflow_id}").json()
            return status if status["state"] in WORKFLOW_FINAL else None

        return wait_until(final, 60, f"workflow {workflow_id} to end", poll_s=0.1)


def audit_records(url: str, workflow_id: str) -> list[dict[str, Any]]:
    with api(url) as http:
        return [
            json.loads(line)
            for line in http.get(f"/workflows/{workflow_id}/audit").text.splitlines()
        ]


def sign_in(page: Page, url: str, token: str = TOKEN) -> None:
    page.goto(f"{url}/dashboard")
    page.locator("#token").fill(token)
    page.get_by_role("button", name="Open").click()


def step_cell(page: Page, step_id: str) -> Any:
    """Audit rows of one step (its id is the row's third cell)."""
    return page.locator("#audit tbody tr").filter(
        has=page.locator("td:nth-child(3)", has_text=re.compile(f"^{re.escape(step_id)}$"))
    )


# -- the page -------------------------------------------------------------------------


def test_a_running_step_turns_succeeded_on_the_page_when_its_gate_opens(
    page: Page, api_url: str, stack: Stack
) -> None:
    gate, tenant = f"dashboard-{uuid.uuid4().hex}", f"dash-{uuid.uuid4().hex[:8]}"
    workflow_id = submit(
        api_url,
        {
            "name": "dashboard-live",
            "tenant": tenant,
            "steps": [
                {"id": "prepare", "task": "treadle.noop"},
                {"id": "held", "task": "tests.hold", "args": {"name": gate}, "after": ["prepare"]},
                {"id": "report", "task": "treadle.noop", "after": ["held"]},
            ],
        },
    )

    # Given an operator signed in, who finds the workflow by its tenant and state
    sign_in(page, api_url)
    page.locator("#filters input[name=tenant]").fill(tenant)
    page.locator("#filters input[name=tenant]").press("Enter")
    page.locator("#filters select[name=state]").select_option("running")
    row = page.locator(f'#workflows tr[data-workflow="{workflow_id}"]')
    expect(row).to_contain_text("running")
    expect(page.locator("#workflows tbody tr")).to_have_count(1)
    row.get_by_role("link", name="dashboard-live").click()

    # When the page shows the held step running, in the graph and on the timeline
    held = page.locator('#graph [data-step="held"]')
    expect(held).to_have_attribute("data-state", "running")
    expect(page.locator('#graph [data-step="prepare"]')).to_have_attribute(
        "data-state", "succeeded"
    )
    expect(page.locator('#timeline [data-step="held"] rect.run')).to_have_count(1)
    expect(page.locator("#wf-state .badge")).to_have_attribute("data-state", "running")
    page.evaluate("window.sameDocument = true")  # gone if the page were reloaded
    open_gate(gate, stack.redis_url)

    # Then it turns succeeded, and the rest of the workflow with it, without a reload
    expect(held).to_have_attribute("data-state", "succeeded")
    expect(page.locator('#graph [data-step="report"]')).to_have_attribute("data-state", "succeeded")
    expect(page.locator("#wf-state .badge")).to_have_attribute("data-state", "succeeded")
    expect(page.locator('#timeline [data-step="report"]')).to_have_attribute(
        "data-state", "succeeded"
    )
    assert page.evaluate("window.sameDocument") is True

    # And the audit trail on the page is the stored one, with its verdict
    assert ended(api_url, workflow_id)["state"] == "succeeded"
    stored = audit_records(api_url, workflow_id)
    expect(page.locator("#audit-verdict")).to_contain_text("chain intact")
    expect(page.locator("#audit tbody tr")).to_have_count(len(stored))
    held_records = [r for r in stored if r.get("step_id") == "held"]
    expect(step_cell(page, "held")).to_have_count(len(held_records))
    expect(step_cell(page, "held").last).to_contain_text("succeeded")


def test_a_dead_letter_is_listed_and_replayed_from_the_page(
    page: Page, api_url: str, stack: Stack
) -> None:
    broken_name = f"dashboard-dlq-{uuid.uuid4().hex}"
    workflow_id = submit(
        api_url,
        {
            "name": "dashboard-dlq",
            "steps": [
                {"id": "before", "task": "treadle.noop"},
                {
                    "id": "broken",
                    "task": "tests.broken_until_fixed",
                    "args": {"name": broken_name},
                    "after": ["before"],
                },
                {"id": "after", "task": "treadle.noop", "after": ["broken"]},
            ],
        },
    )
    assert ended(api_url, workflow_id)["state"] == "failed"
    with api(api_url) as http:
        letters = http.get("/dead-letters").json()
    letter_id = next(e["id"] for e in letters if e.get("workflow_id") == workflow_id)

    # Given the dead-letter view lists the step's letter
    sign_in(page, api_url)
    page.get_by_role("link", name="Dead letters").click()
    row = page.locator(f'#dead-letters tr[data-letter="{letter_id}"]')
    expect(row).to_contain_text("tests.broken_until_fixed")
    expect(row).to_contain_text(f"{broken_name} is broken")

    # When the cause is fixed and the operator presses Replay
    fix(broken_name, stack.redis_url)
    row.get_by_role("button", name="Replay").click()

    # Then the page says so and the letter leaves the list
    expect(page.locator("#notice")).to_contain_text(f"Replayed {letter_id}")
    expect(row).to_have_count(0)

    # And the step really ran again: the workflow went on and succeeded
    status = ended(api_url, workflow_id)
    assert status["state"] == "succeeded"
    assert {s["id"]: s["state"] for s in status["steps"]}["after"] == "succeeded"
    broken = [r["to"] for r in audit_records(api_url, workflow_id) if r.get("step_id") == "broken"]
    assert "dead-lettered" in broken and broken[-1] == "succeeded"
    assert broken.index("dead-lettered") < len(broken) - 1
    with api(api_url) as http:
        assert letter_id not in [e["id"] for e in http.get("/dead-letters").json()]

    # And the workflow's own view, one click away, shows it succeeded
    page.locator("#notice a").click()
    expect(page.locator("#wf-state .badge")).to_have_attribute("data-state", "succeeded")
    expect(page.locator('#graph [data-step="broken"]')).to_have_attribute("data-state", "succeeded")


def test_a_wrong_token_gets_a_clear_401_message_and_no_data(page: Page, api_url: str) -> None:
    sign_in(page, api_url, token="not-the-token-0123456789")
    error = page.locator("#auth-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("401 Unauthorized")
    expect(error).to_contain_text("TREADLE_API_TOKEN")
    expect(page.locator("#workflows")).to_have_count(0)
    assert page.evaluate(f"sessionStorage.getItem({TOKEN_KEY!r})") is None

    # A stored token the API stops accepting (it was rotated) gets the same message.
    page.evaluate(f"sessionStorage.setItem({TOKEN_KEY!r}, 'a-token-since-rotated-0123')")
    page.reload()
    expect(error).to_contain_text("401 Unauthorized")
    assert page.evaluate(f"sessionStorage.getItem({TOKEN_KEY!r})") is None

    # The right token then opens it.
    page.locator("#token").fill(TOKEN)
    page.get_by_role("button", name="Open").click()
    expect(page.locator("#workflows")).to_be_visible()
    expect(error).to_be_hidden()


# -- the shell --------------------------------------------------------------------------


def test_the_shell_needs_no_token_but_its_data_does(api_url: str) -> None:
    with httpx.Client(base_url=api_url, timeout=10) as anonymous:
        shell = anonymous.get("/dashboard")
        assert shell.status_code == 200
        assert shell.headers["content-type"].startswith("text/html")
        policy = shell.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "connect-src 'self'" in policy
        for name in ("dashboard.js", "graph.js", "timeline.js", "dom.js", "dashboard.css"):
            assert anonymous.get(f"/dashboard/static/{name}").status_code == 200, name
        assert anonymous.get("/", follow_redirects=False).headers["location"] == "/dashboard"
        assert anonymous.get("/dashboard/static/nope.js").status_code == 404
        assert anonymous.get("/workflows").status_code == 401
        assert anonymous.get("/dead-letters").status_code == 401


def test_the_shell_loads_nothing_from_elsewhere() -> None:
    static = files("orchestrator.api").joinpath("static")
    texts = {f.name: f.read_text("utf-8") for f in static.iterdir() if f.is_file()}
    assert set(texts) >= {"index.html", "dashboard.js", "dashboard.css"}
    for name, text in texts.items():
        # The SVG namespace is a name, not a download.
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, f"{name} refers to {urls}"
