"""The API's pure parts: one error mapping both ways, the token check, the body guard's
media types, and the remote client turning answers back into errors. No Redis."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from config.settings import Settings
from orchestrator.api.auth import MIN_TOKEN_CHARS, Auth, token_matches
from orchestrator.api.body import MAX_JSON_DEPTH, is_json_media_type, json_depth, parse_json_body
from orchestrator.api.errors import error_body, error_response
from orchestrator.errors import (
    InvalidInput,
    NotFound,
    NotJson,
    Problem,
    Refused,
    TooLarge,
    TreadleError,
    Unauthorized,
    Unreachable,
    WorkflowFailed,
    WrongState,
    error_class,
)
from orchestrator.remote import error_from_response
from orchestrator.service import parse_param

TOKEN = "a-token-long-enough-0123"


@pytest.mark.parametrize(
    ("error", "status", "exit_code"),
    [
        (InvalidInput("x"), 400, 2),
        (WrongState("x"), 409, 2),
        (TooLarge("x"), 413, 2),
        (NotJson("x"), 415, 2),
        (Unauthorized("x"), 401, 2),
        (Refused("x", 3.2), 429, 3),
        (NotFound("x"), 404, 4),
        (Unreachable("x"), 503, 5),
        (WorkflowFailed("x"), 500, 1),
    ],
)
def test_each_error_has_one_http_status_and_one_exit_code(
    error: TreadleError, status: int, exit_code: int
) -> None:
    assert (error.http_status, error.exit_code) == (status, exit_code)
    assert error_response(error).status_code == status
    assert error_class(error.code) is type(error) or error.code == "error"


def test_an_unknown_error_code_maps_to_the_root() -> None:
    assert error_class("something-new") is TreadleError


def test_refused_answers_carry_retry_after_in_whole_seconds() -> None:
    response = error_response(Refused("busy", 2.2))
    assert response.headers["Retry-After"] == "3"
    assert error_body(Refused("busy", 2.2)).retry_after_s == 2.2


def test_unauthorized_answers_challenge_for_a_bearer_token() -> None:
    assert error_response(Unauthorized("no")).headers["WWW-Authenticate"].startswith("Bearer")


def test_invalid_input_lists_every_problem_with_its_location() -> None:
    body = error_body(InvalidInput([Problem("steps[0].task", "unknown"), Problem("name", "x")]))
    assert [(p.where, p.what) for p in body.problems or []] == [
        ("steps[0].task", "unknown"),
        ("name", "x"),
    ]


def _answer(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("GET", "http://orchestrator/workflows")
    return httpx.Response(status, json=body, headers=headers, request=request)


def test_the_remote_client_turns_answers_back_into_the_same_errors() -> None:
    invalid = error_from_response(
        _answer(
            400,
            {
                "error": "invalid",
                "message": "m",
                "problems": [{"where": "steps[1].after", "what": "unknown step 'pay'"}],
            },
        ),
        source="order.yaml",
    )
    assert isinstance(invalid, InvalidInput)
    assert str(invalid) == "order.yaml: steps[1].after: unknown step 'pay'"

    refused = error_from_response(
        _answer(429, {"error": "refused", "message": "retry in 4 s", "retry_after_s": 4})
    )
    assert isinstance(refused, Refused) and refused.retry_after_s == 4
    assert str(refused) == "retry in 4 s"

    assert isinstance(
        error_from_response(_answer(404, {"error": "not_found", "message": "m"})), NotFound
    )
    assert isinstance(
        error_from_response(_answer(409, {"error": "wrong_state", "message": "m"})), WrongState
    )
    assert isinstance(
        error_from_response(_answer(401, {"error": "unauthorized", "message": "m"})), Unauthorized
    )


def test_an_answer_that_is_not_ours_is_unreachable_if_it_is_a_server_error() -> None:
    request = httpx.Request("GET", "http://proxy/workflows")
    bad_gateway = httpx.Response(502, text="<html>bad gateway</html>", request=request)
    assert isinstance(error_from_response(bad_gateway), Unreachable)


def test_tokens_are_compared_whole() -> None:
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches(TOKEN[:-1], TOKEN)
    assert not token_matches(TOKEN + "x", TOKEN)
    assert not token_matches("", TOKEN)
    assert not token_matches(None, TOKEN)


def test_auth_refuses_to_be_configured_without_a_token() -> None:
    with pytest.raises(InvalidInput) as caught:
        Auth.from_settings(Settings(api_token=None, api_auth=True))
    assert caught.value.problems[0].where == "TREADLE_API_TOKEN"
    assert "TREADLE_API_AUTH=off" in str(caught.value)
    with pytest.raises(InvalidInput, match="shorter"):
        Auth.from_settings(Settings(api_token=SecretStr("x" * (MIN_TOKEN_CHARS - 1))))


def test_auth_is_off_only_when_asked() -> None:
    assert not Auth.from_settings(Settings(api_auth=False)).enabled
    assert not Auth.from_settings(Settings(api_token=None), insecure_no_auth=True).enabled
    auth = Auth.from_settings(Settings(api_token=SecretStr(TOKEN)))
    assert auth.enabled
    auth.check(TOKEN)
    for wrong in (None, "nope", TOKEN.upper()):
        with pytest.raises(Unauthorized):
            auth.check(wrong)


def test_the_api_auth_setting_reads_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TREADLE_API_AUTH", "off")
    assert Settings().api_auth is False


def test_a_token_never_shows_in_the_settings_repr() -> None:
    assert TOKEN not in repr(Settings(api_token=SecretStr(TOKEN)))


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON", True),
        ("application/merge-patch+json", True),
        ("text/plain", False),
        ("application/x-yaml", False),
        ("", False),
        ("application/jsonx", False),
    ],
)
def test_only_json_media_types_pass_the_body_guard(content_type: str, accepted: bool) -> None:
    assert is_json_media_type(content_type) is accepted


def test_a_param_override_parses_json_values_and_locates_bad_ones() -> None:
    assert parse_param("n=42") == ("n", 42)
    assert parse_param("name=shop") == ("name", "shop")
    assert parse_param('tags=["a"]') == ("tags", ["a"])
    assert parse_param("x=NaN") == ("x", "NaN")
    with pytest.raises(InvalidInput) as caught:
        parse_param("novalue", "query.param[0]")
    assert caught.value.problems[0].where == "query.param[0]"


def test_json_depth_counts_nesting_without_recursing() -> None:
    assert json_depth(1) == 0
    assert json_depth({"a": [1, {"b": []}]}) == 4
    deep: object = 0
    for _ in range(100_000):  # far past Python's recursion limit
        deep = [deep]
    assert json_depth(deep) == 100_000


@pytest.mark.parametrize(
    ("raw", "where", "what"),
    [
        (b"", "body", "is empty"),
        (b'{"a": NaN}', "body", "NaN is not JSON"),
        (b"{a: 1}", "body (line 1, column 2)", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "body", f"deeper than {MAX_JSON_DEPTH}"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "body", "deeper"),
    ],
)
def test_a_body_that_is_not_json_is_located(raw: bytes, where: str, what: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_json_body(raw)
    problem = caught.value.problems[0]
    assert problem.where == where and what in problem.what


def test_a_body_as_deep_as_allowed_parses() -> None:
    raw = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert json_depth(parse_json_body(raw)) == MAX_JSON_DEPTH
