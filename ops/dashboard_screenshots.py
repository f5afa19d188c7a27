"""The README's pictures of the dashboard, taken from a real run.

Starts a private stack (Redis, a worker per pool, an orchestrator serving the HTTP API
and the page), runs the sample workflows, one workflow held mid-run and two that end in
the dead-letter queue, and photographs the page in the system Chromium (never one
Playwright downloads): the workflow list, one workflow's graph and timeline, and the
dead-letter queue.

    .venv/bin/python ops/dashboard_screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import secrets
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from playwright.sync_api import Page, expect, sync_playwright
from pydantic import SecretStr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from config.settings import Settings  # noqa: E402
from ops.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from orchestrator.stack import Stack  # noqa: E402
from orchestrator.states import WORKFLOW_FINAL  # noqa: E402

SAMPLES = REPO / "workers" / "samples" / "workflows"
SAMPLE_MODULES = (
    "workers.samples.shop,workers.samples.ml,workers.samples.compliance,workers.samples.images"
)
WIDTH = 1400
DEADLINE_S = 60.0


def _sleep(step_id: str, seconds: float, after: list[str]) -> dict[str, Any]:
    return {"id": step_id, "task": "treadle.sleep", "args": {"seconds": seconds}, "after": after}


# Three checks in parallel on the critical pool's two processes: one of them waits in
# the queue, which the timeline shows. `charge` runs until the pictures are taken.
CHECKOUT = {
    "name": "checkout",
    "priority": "critical",
    "tenant": "shop-eu",
    "steps": [
        _sleep("fetch-cart", 0.4, []),
        _sleep("validate", 0.7, ["fetch-cart"]),
        _sleep("price", 1.1, ["fetch-cart"]),
        _sleep("fraud-check", 0.9, ["fetch-cart"]),
        _sleep("charge", 300, ["validate", "price", "fraud-check"]),
        _sleep("ship", 0.2, ["charge"]),
        _sleep("email", 0.1, ["charge"]),
        _sleep("invoice", 0.3, ["charge"]),
    ],
}
NIGHTLY_EXPORT = {
    "name": "nightly-export",
    "tenant": "finance",
    "steps": [
        {"id": "extract", "task": "treadle.noop"},
        {
            "id": "upload",
            "task": "treadle.fail",
            "args": {"times": 99},
            "after": ["extract"],
            "retry": {"max_attempts": 3, "backoff_s": 0.1},
        },
    ],
}
THUMBNAILS = {
    "name": "thumbnails",
    "priority": "bulk",
    "tenant": "media",
    "steps": [{"id": "resize", "task": "treadle.fail", "args": {"times": 1, "permanent": True}}],
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while not (found := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what}")
        time.sleep(0.1)
    return found


def submit(http: httpx.Client, spec: dict[str, Any]) -> str:
    created = http.post("/workflows", json=spec)
    created.raise_for_status()
    return str(created.json()["id"])


def ended(http: httpx.Client, workflow_id: str) -> None:
    until(
        lambda: http.get(f"/workflows/{workflow_id}").json()["state"] in WORKFLOW_FINAL,
        f"{workflow_id} to end",
    )


def step_running(http: httpx.Client, workflow_id: str, step_id: str) -> bool:
    steps = http.get(f"/workflows/{workflow_id}").json()["steps"]
    return any(s["id"] == step_id and s["state"] == "running" for s in steps)


def run_demo(http: httpx.Client) -> str:
    """The workflows the pictures show; returns the id of the one held mid-run."""
    done = []
    for sample in ("ml-sweep", "compliance-report", "image-processing", "order-fulfillment"):
        done.append(submit(http, yaml.safe_load((SAMPLES / f"{sample}.yaml").read_text())))
    done += [submit(http, NIGHTLY_EXPORT), submit(http, THUMBNAILS)]
    for workflow_id in done:
        ended(http, workflow_id)
    checkout = submit(http, CHECKOUT)
    until(lambda: step_running(http, checkout, "charge"), "the charge step to run")
    time.sleep(2.0)  # let its bar grow on the timeline: a picture, not a test
    return checkout


def photograph(page: Page, url: str, token: str, checkout: str, out: Path) -> None:
    page.goto(f"{url}/dashboard")
    page.locator("#token").fill(token)
    page.get_by_role("button", name="Open").click()
    expect(page.locator(f'#workflows tr[data-workflow="{checkout}"]')).to_be_visible()
    page.set_viewport_size({"width": WIDTH, "height": 560})
    page.screenshot(path=str(out / "dashboard-list.png"))

    page.set_viewport_size({"width": WIDTH, "height": 1000})
    page.locator(f'#workflows tr[data-workflow="{checkout}"] a').click()
    expect(page.locator('#graph [data-step="charge"]')).to_have_attribute("data-state", "running")
    expect(page.locator("#audit-verdict")).to_contain_text("chain intact")
    page.mouse.move(0, 0)  # no hover highlight in the picture
    page.screenshot(path=str(out / "dashboard-workflow.png"))

    page.set_viewport_size({"width": WIDTH, "height": 340})
    page.get_by_role("link", name="Dead letters").click()
    expect(page.locator("#dead-letters tr[data-letter]")).to_have_count(2)
    page.mouse.move(0, 0)
    page.screenshot(path=str(out / "dashboard-dlq.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="treadle-shots-") as home:
        settings = Settings(
            redis_url=None,
            home=Path(home),
            task_modules=SAMPLE_MODULES,
            api_token=SecretStr(token),
        )
        with Stack(settings, api_port=port, api_token=token) as stack:
            url = stack.api_url()
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
                checkout = run_demo(http)
                expect.set_options(timeout=DEADLINE_S * 1000)
                with sync_playwright() as playwright:
                    browser = playwright.chromium.launch(
                        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
                    )
                    page = browser.new_page(viewport={"width": WIDTH, "height": 800})
                    photograph(page, url, token, checkout, args.out)
                    browser.close()
                # Stop the held step now, rather than wait for the workers' warm shutdown.
                http.post(f"/workflows/{checkout}/cancel", params={"terminate": "true"})
    for name in ("dashboard-list.png", "dashboard-workflow.png", "dashboard-dlq.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()
