"""Tests on pytest-celery's Docker-based setup (marker ``docker``); skipped without an engine."""
