"""The system browser that the dashboard's tests and screenshots drive through Playwright.

Debian's chromium, never a browser Playwright downloads (CI installs the package). The
flags keep a headless run quiet: no sandbox (CI runs as root), no GPU, and none of the
background traffic (updates, sync, QUIC probes) a first run would start.
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
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
