"""schemathesis against the API's own OpenAPI document, over real HTTP: whatever it sends,
the API answers as documented and never with a 5xx.

The API runs in this process (the app served by ``ApiServer``, as the orchestrator
process serves it) on a Redis of its own: the fuzzer purges and replays dead letters
and cancels what it finds, which must not touch the workflows of other tests. No
workers are needed: what it submits only has to be stored and queued.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.errors import InvalidSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from config.settings import Settings
from orchestrator.api.app import create_app
from orchestrator.api.server import ApiServer, Listener
from orchestrator.service import Orchestrator
from orchestrator.stack import Stack

pytestmark = pytest.mark.e2e

TOKEN = "fuzzing-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Per operation: schema-valid requests, and requests that break the schema on purpose.
EXAMPLES = {GenerationMode.POSITIVE: 40, GenerationMode.NEGATIVE: 20}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home: Path = tmp_path_factory.mktemp("fuzz-home")
    config = Settings(home=home, api_token=SecretStr(TOKEN), api_max_body_bytes=256 * 1024)
    with Stack(config, workers=[], orchestrator=False) as stack:
        orchestrator = Orchestrator.from_settings(config, stack.redis_url)
        server = ApiServer(create_app(orchestrator, config), Listener.bind("127.0.0.1", 0))
        server.start()
        try:
            yield server.listener.url
        finally:
            server.stop()
            orchestrator.close()


def test_the_api_answers_as_documented_and_never_with_a_server_error(served: str) -> None:
    # Each operation on its own, so every one gets its share of examples. (schemathesis'
    # pytest integration, from_fixture, breaks on pytest 9: it sets Function._nodeid.)
    # Bounded to take seconds, not minutes.
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json", headers=AUTH, timeout=10)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 12, [op.label for op in operations]
    for operation, mode in itertools.product(operations, EXAMPLES):
        cases = operation.as_strategy(generation_mode=mode)
        if mode is GenerationMode.NEGATIVE:
            cases = drawable(cases)

        @given(case=cases)
        @settings(
            max_examples=EXAMPLES[mode],
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def answers_as_documented(case: Case[Any]) -> None:
            case.call_and_validate(base_url=served, headers=AUTH, checks=CHECKS)

        try:
            answers_as_documented()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise  # else: it takes nothing that could be made invalid (/healthz)


@st.composite
def drawable(draw: st.DrawFn, cases: st.SearchStrategy[Case[Any]]) -> Case[Any]:
    """Invalid requests, without those schemathesis cannot build. Negative mode mutates
    the schema, and on some of its own mutations its generator gives up (seen: "Cannot
    generate an array with 1 demanded elements", and a RecursionError in the recursive
    stages of a workflow spec): its limits, not the API's, so such a draw is discarded.
    Valid requests are never filtered: our own document must always generate."""
    try:
        return draw(cases)
    except (InvalidSchema, RecursionError):
        reject()
