"""``treadle bench``: treadle side by side with hand-written Celery and with Dramatiq.

One run starts one Redis, treadle's workers, a raw Celery worker and a Dramatiq worker
(each with the same number of processes), and measures every scenario on both sides in
turn, so that the ratios compare runs made under the same load. ``runner`` drives it;
``scenarios/`` holds one module per scenario; ``report`` and ``plot`` present the result.

Runs from a source checkout: ``python -m ops.bench`` or ``treadle bench``.
"""
