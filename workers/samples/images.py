"""Image processing: every image is resized, compressed and scanned at the same time,
then one summary step counts what was done.

Images are simulated: an image's size and bytes are derived from its name. The scanner
is an external, rate-limited service, so ``images.scan`` takes the ``scanner-api``
resource and retries by default; it flags any image whose name contains ``eicar``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from orchestrator.errors import Permanent
from workers.context import StepContext
from workers.registry import task

SCANNER_RETRY = {"max_attempts": 4, "backoff_s": 0.2, "backoff_max_s": 2.0, "jitter": True}


def _work(seconds: float) -> None:
    time.sleep(max(0.0, seconds))


def _digest(image: str) -> int:
    return int(hashlib.sha256(image.encode()).hexdigest(), 16)


def original_size(image: str) -> tuple[int, int]:
    """Width and height of the (simulated) original, from 640x480 to 4095x3071."""
    digest = _digest(image)
    width = 640 + digest % 3456
    return width, width * 3 // 4


def original_bytes(image: str) -> int:
    width, height = original_size(image)
    return width * height * 3 // 10  # a typical photo compresses to ~10% of raw RGB


def _check_image(image: str) -> None:
    if not image or "/" in image or image.startswith("."):
        raise Permanent(f"not an image name: {image!r}")


@task(name="images.resize")
def resize(
    ctx: StepContext, image: str, width: int | None = None, work_s: float = 0.05
) -> dict[str, Any]:
    """Scale ``image`` to ``width`` (default ``params.width``, else 256), keeping its aspect."""
    _check_image(image)
    target = width if width is not None else int(ctx.params.get("width", 256))
    if not 16 <= target <= 8192:
        raise Permanent(f"width must be between 16 and 8192, not {target}")
    original_w, original_h = original_size(image)
    target = min(target, original_w)  # never upscale
    _work(work_s)
    return {
        "kind": "resized",
        "image": image,
        "original": [original_w, original_h],
        "size": [target, original_h * target // original_w],
    }


@task(name="images.compress")
def compress(
    ctx: StepContext, image: str, quality: int | None = None, work_s: float = 0.05
) -> dict[str, Any]:
    """Re-encode ``image`` at ``quality`` (default ``params.quality``, else 80)."""
    _check_image(image)
    level = quality if quality is not None else int(ctx.params.get("quality", 80))
    if not 1 <= level <= 100:
        raise Permanent(f"quality must be between 1 and 100, not {level}")
    before = original_bytes(image)
    after = before * (20 + level * 3 // 5) // 100  # quality 100 keeps 80%, quality 1 keeps 20%
    _work(work_s)
    return {
        "kind": "compressed",
        "image": image,
        "quality": level,
        "bytes_before": before,
        "bytes_after": after,
    }


@task(name="images.scan", resources=["scanner-api"], retry=SCANNER_RETRY, timeout_s=10)
def scan(ctx: StepContext, image: str, work_s: float = 0.05) -> dict[str, Any]:
    """Ask the malware scanner about ``image``; the key makes a retried scan the same job."""
    _check_image(image)
    _work(work_s)
    infected = "eicar" in image.lower()
    return {
        "kind": "scan",
        "image": image,
        "scan_id": f"scan-{hashlib.sha256(ctx.idempotency_key.encode()).hexdigest()[:12]}",
        "clean": not infected,
        "threat": "EICAR-Test-File" if infected else None,
        "idempotency_key": ctx.idempotency_key,
    }


@task(name="images.summarize")
def summarize(ctx: StepContext, work_s: float = 0.02) -> dict[str, Any]:
    """Count the resized, compressed and scanned images; list the ones to quarantine."""
    by_kind: dict[str, list[dict[str, Any]]] = {"resized": [], "compressed": [], "scan": []}
    for result in ctx.results.values():
        if isinstance(result, dict) and result.get("kind") in by_kind:
            by_kind[result["kind"]].append(result)
    images = sorted({r["image"] for found in by_kind.values() for r in found})
    if not images:
        raise Permanent(f"step {ctx.step_id!r} depends on no image step")
    done = {kind: {r["image"] for r in found} for kind, found in by_kind.items()}
    _work(work_s)
    return {
        "kind": "summary",
        "images": images,
        "resized": len(done["resized"]),
        "compressed": len(done["compressed"]),
        "scanned": len(done["scan"]),
        "complete": [i for i in images if all(i in found for found in done.values())],
        "quarantine": sorted(r["image"] for r in by_kind["scan"] if not r["clean"]),
        "bytes_saved": sum(r["bytes_before"] - r["bytes_after"] for r in by_kind["compressed"]),
    }
