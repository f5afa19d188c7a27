"""`treadle up` as a user runs it: a private stack in the foreground, found by other
`treadle` commands in the same directory, visible in Flower, stopped by Ctrl-C."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SAMPLE_MODULES, clean_env, treadle, wait_until

pytestmark = pytest.mark.e2e


def _env(**extra: str) -> dict[str, str]:
    # Flower and the API on any free port, so a running `treadle up` elsewhere does not matter.
    return clean_env(task_modules=SAMPLE_MODULES, flower_port="0", api_port="0", **extra)


def _treadle(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return treadle(*args, env=_env(), cwd=cwd)


def _flower(url: str, auth: str, path: str) -> Any:
    request = urllib.request.Request(url.rstrip("/") + path)
    request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_up_serves_submissions_shows_pools_in_flower_and_stops_on_ctrl_c(
    tmp_path: Path,
) -> None:
    log = (tmp_path / "up.log").open("w+")
    up = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "up"],
        cwd=tmp_path,
        env=_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def banner_shown() -> str | None:
            text = (tmp_path / "up.log").read_text()
            assert up.poll() is None, text
            return text if "Flower:" in text else None

        banner = wait_until(banner_shown, 90, "treadle up to print its banner", poll_s=0.1)
        match = re.search(r"Flower: (\S+)\s+\(user '([^']+)', password '([^']+)'\)", banner)
        assert match, banner
        url, auth = match.group(1), f"{match.group(2)}:{match.group(3)}"
        api = re.search(r"API: +(\S+)\s+\(token '([^']+)'\)", banner)
        assert api, banner
        api_url, token = api.group(1), api.group(2)

        # Another command in the same directory finds the running stack by itself.
        spec = tmp_path / "hello.yaml"
        spec.write_text(
            "name: hello\npriority: critical\nsteps:\n  - {id: a, task: treadle.noop}\n"
        )
        submitted = _treadle(tmp_path, "submit", str(spec), "--wait", "--json")
        assert submitted.returncode == 0, submitted.stderr
        workflow_id = json.loads(submitted.stdout)["id"]

        # The API it printed answers with the token it printed, and only with it.
        remote = treadle(
            "status",
            workflow_id,
            "--json",
            env=_env(api_url=api_url, api_token=token),
            cwd=tmp_path,
        )
        assert remote.returncode == 0, remote.stderr
        assert json.loads(remote.stdout)["state"] == "succeeded"
        wrong = treadle("list", env=_env(api_url=api_url, api_token="x" * 20), cwd=tmp_path)
        assert wrong.returncode == 2 and "token" in wrong.stderr

        def every_pool_shown() -> bool:
            workers = _flower(url, auth, "/api/workers?refresh=1")
            pools = {name.split("@")[0] for name in workers}
            return {"critical-1", "default-1", "bulk-1"} <= pools

        def step_shown() -> bool:
            tasks = _flower(url, auth, "/api/tasks?state=SUCCESS")
            # Named so that Flower shows the workflow, the step and the pool.
            shown = f"workflow={workflow_id} step=a pool=critical"
            return any(shown in (t.get("args") or "") for t in tasks.values())

        wait_until(every_pool_shown, 30, "Flower to show a worker of every pool")
        wait_until(step_shown, 30, "Flower to show the finished step", poll_s=0.2)
        with pytest.raises(urllib.error.HTTPError) as refused:
            _flower(url, "treadle:wrong", "/api/workers")
        assert refused.value.code == 401
    finally:
        up.send_signal(signal.SIGINT)
        try:
            code = up.wait(60)
        finally:
            if up.poll() is None:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait()
            log.close()
    assert code == 0, (tmp_path / "up.log").read_text()
    assert "stopped" in (tmp_path / "up.log").read_text()
    assert not (tmp_path / ".treadle" / "redis.url").exists()
    assert _treadle(tmp_path, "list").returncode == 5  # nothing to talk to any more


def test_unreachable_redis_exits_5(tmp_path: Path) -> None:
    env = _env(redis_url="redis://127.0.0.1:1/0")
    result = treadle("status", "abc", env=env, cwd=tmp_path, timeout_s=60)
    assert result.returncode == 5, result.stderr
    assert "cannot be reached" in result.stderr
