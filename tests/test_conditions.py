"""The `when:` condition language: values, references, refusals, limits. Pure logic."""

from __future__ import annotations

import ast
import keyword
import pickle
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import conditions
from orchestrator.conditions import (
    MAX_DEPTH,
    MAX_TEXT_LENGTH,
    RESULTS_NEED_STEP,
    Condition,
    ConditionError,
    parse_condition,
)

# Deterministic, so a run is repeatable; no deadline because the first parse warms caches.
CHECK = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PARAMS: dict[str, Any] = {
    "order": {"total": 120, "items": ["a", "b"], "express": True, "note": None},
    "region": "eu",
    "threshold": 0.5,
    "tags": ["x", "y"],
    "n": None,
    "weird key": 7,
    "keys": "data, not a method",
    "huge": 10**400,
}
RESULTS: dict[str, Any] = {
    "check": {"ok": True, "score": 0.8, "items": [1, 2, 3]},
    "train-1": {"score": 0.9},
    "a.b": 3,
    "empty": None,
    "list": [{"x": 1}, {"x": 2}],
}


def holds(
    text: str, params: Mapping[str, Any] = PARAMS, results: Mapping[str, Any] = RESULTS
) -> bool:
    return parse_condition(text).evaluate(params, results)


# ---------------------------------------------------------------------------------------
# (a) what conditions evaluate to

TABLE: list[tuple[str, bool]] = [
    # literals
    ("true", True),
    ("false", False),
    ("True", True),
    ("False", False),
    ("null == None", True),
    ("'eu' == \"eu\"", True),
    ("[1, 2] == [1, 2]", True),
    ("[1, [2, 'a']] == [1, [2, 'a']]", True),
    ("[] == []", True),
    ("  true  ", True),
    ("(params.region == 'eu'\n and true)", True),
    # reading params and results
    ("params.order.total > 100", True),
    ("params.order.total > 120", False),
    ("params.order.express", True),
    ("params['weird key'] == 7", True),
    ('params["order"]["items"][1] == "b"', True),
    ("params.order.items[-1] == 'b'", True),
    ("params.keys == 'data, not a method'", True),
    ("results.check.ok", True),
    ('results["train-1"].score > results.check.score', True),
    ('results["a.b"] == 3', True),
    ("results.list[1].x == 2", True),
    ("results.check == results.check", True),
    ("params.order.items == ['a', 'b']", True),
    ("params.tags == params.tags", True),
    # missing data is null
    ("results.check.flag == true", False),
    ("results.check.flag == null", True),
    ("results.check.flag != null", False),
    ("results.missing.x.y == null", True),
    ("results.empty == null", True),
    ("results.empty.x == null", True),
    ("params.n.x == null", True),
    ("params.order.note == null", True),
    ("results.check.items[5] == null", True),
    ("results.check.items[-4] == null", True),
    ("results.check.items['0'] == null", True),
    ("params.order[0] == null", True),
    ("params.region.x == null", True),
    ("params.region[0] == null", True),
    ("params.threshold.real == null", True),
    # equality is JSON equality
    ("1 == 1.0", True),
    ("true == 1", False),
    ("false != 0", True),
    ("[true] == [1]", False),
    ("null == false", False),
    ("'1' == 1", False),
    ("[1, 2] == [2, 1]", False),
    ("[1] == [1, 1]", False),
    ("results.check == results['train-1']", False),
    # ordering and chains
    ("0 < params.threshold < 1", True),
    ("0 < params.threshold < 0.5", False),
    ("0 < params.threshold <= 0.5", True),
    ("1 < 3 > 2", True),
    ("1 < 2 < 2", False),
    ("3 >= 3", True),
    ("'a' < 'b'", True),
    ("'b' <= 'a'", False),
    ("1 < 2.5", True),
    # membership
    ("'a' in params.order.items", True),
    ("'z' in params.order.items", False),
    ("'z' not in params.order.items", True),
    ("'eu' in 'europe'", True),
    ("'region' in params", True),
    ("'nope' in params", False),
    ("'ok' in results.check", True),
    ("2 in results.check.items", True),
    ("true in [1]", False),
    ("1 in [1.0]", True),
    ("[1, 2] in [[1, 2], 3]", True),
    ("null in [null]", True),
    # arithmetic
    ("params.order.total * 2 - 40 == 200", True),
    ("7 / 2 == 3.5", True),
    ("7 % 3 == 1", True),
    ("-7 % 3 == 2", True),
    ("-params.order.total < 0", True),
    ("- -1 == 1", True),
    ("(1 + 2) * 3 == 9", True),
    ("1 + 2 * 3 == 7", True),
    ("0.1 + 0.2 > 0.3", True),
    ("9223372036854775807 + 1 == 9223372036854775808", True),
    ("-(-9223372036854775808) == 9223372036854775808", True),
    ("params.huge - params.huge == 0", True),
    ("params.huge > 1e300", True),
    # len
    ("len(params.region) == 2", True),
    ("len(params.order.items) == 2", True),
    ("len(results.check) == 3", True),
    ("len('') == 0", True),
    ("len([1, [2, 3]]) == 2", True),
    ("len(params) == 8", True),
    # boolean logic, precedence and short-circuit
    ("results.check.ok and params.order.express", True),
    ("results.check.ok and not params.order.express", False),
    ("false or true and false", False),
    ("not false and true", True),
    ("not 1 == 2", True),
    ("false and 1 / 0 == 1", False),
    ("true or len(5) == 1", True),
    ("false and results.missing.x > 1", False),
    ("results.check.flag != null and results.check.flag > 1", False),
    ("1 > 2 < 'a'", False),
    ("true and true and true and false", False),
    ("false or false or true", True),
]


@pytest.mark.parametrize(("text", "expected"), TABLE)
def test_table(text: str, expected: bool) -> None:
    assert holds(text) is expected


def test_results_and_params_may_be_empty() -> None:
    assert holds("params.a == null and results.b == null", {}, {}) is True
    assert holds("len(params) == 0", {}, {}) is True


# ---------------------------------------------------------------------------------------
# (b) references: the step ids read through `results`


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("results.check.ok", {"check"}),
        ('results["train-1"].score > 0.5', {"train-1"}),
        ("results['a.b'] == 3 and results.check.items[0] == 1", {"a.b", "check"}),
        ("params.x == 1", set()),
        ("len(results.x) > 0 or [results.y.z] == [1]", {"x", "y"}),
        ("results.a.b.c == results['a'].d", {"a"}),
        ("not results.q", {"q"}),
        ("-results.n < 0", {"n"}),
        ("results.__class__ == null", {"__class__"}),
        ("'results' in params and params.results == 1", set()),
        ("false and results.skipped.ok", {"skipped"}),
    ],
)
def test_references(text: str, expected: set[str]) -> None:
    condition = parse_condition(text)
    assert condition.references == frozenset(expected)
    assert condition.text == text


def test_condition_can_be_built_directly_but_must_be_consistent() -> None:
    built = Condition("results.a.ok", frozenset({"a"}))
    assert built == parse_condition("results.a.ok")
    assert hash(built) == hash(parse_condition("results.a.ok"))
    assert built.evaluate({}, {"a": {"ok": True}}) is True
    with pytest.raises(ConditionError, match="do not match"):
        Condition("results.a.ok", frozenset({"b"}))
    with pytest.raises(ConditionError, match="unknown name"):
        Condition("os", frozenset())


def test_condition_survives_pickling() -> None:
    condition = parse_condition("results.a.n > params.min")
    copy = pickle.loads(pickle.dumps(condition))
    assert copy == condition
    assert copy.evaluate({"min": 1}, {"a": {"n": 2}}) is True


def test_list_literals_are_fresh_each_time() -> None:
    condition = parse_condition("[1, 2] == params.x")
    assert condition.evaluate({"x": [1, 2]}, {}) is True
    assert condition.evaluate({"x": [1, 2]}, {}) is True


# ---------------------------------------------------------------------------------------
# (c) refused at parse time, each with a message naming what is wrong

REFUSED: list[tuple[str, str]] = [
    ("import os", "import"),
    ("from os import path", "import"),
    ("__import__('os').system('ls')", "function calls other than len() are not allowed"),
    ("open('/etc/passwd')", "function calls other than len() are not allowed"),
    ("params.x.upper()", "function calls other than len() are not allowed"),
    ("params.__class__.__subclasses__()", "function calls other than len() are not allowed"),
    ("len(1, 2)", "len() takes exactly one argument"),
    ("len(x=1)", "len() takes exactly one argument"),
    ("len(*params)", "len() takes exactly one argument"),
    ("len", "len must be called"),
    ("len.x", "len must be called"),
    ("os", "unknown name 'os': use params.<key> or results.<step id>"),
    ("os.path == 1", "unknown name 'os'"),
    ("param.x == 1", "unknown name 'param'"),
    ("__builtins__", "unknown name '__builtins__'"),
    ("results", RESULTS_NEED_STEP),
    ("len(results) > 0", RESULTS_NEED_STEP),
    ("'a' in results", RESULTS_NEED_STEP),
    ("results[0] == 1", RESULTS_NEED_STEP),
    ("results[-1].x == 1", RESULTS_NEED_STEP),
    ("lambda: 1", "lambda"),
    ("[x for x in params]", "comprehensions"),
    ("{k: 1 for k in params}", "comprehensions"),
    ("(x for x in params)", "comprehensions"),
    ("{1: 2} == params", "object literals"),
    ("{1} == params", "set literals"),
    ("(1, 2) == params", "tuples"),
    ("1 if true else 2", "conditional expressions"),
    ("(y := 1) == 1", "assignment expressions (:=)"),
    ("f'{params}' == ''", "f-strings"),
    ("2 ** 3 == 8", "exponent operator **"),
    ("7 // 2 == 3", "floor division //"),
    ("1 & 1 == 1", "bitwise operator &"),
    ("1 | 1 == 1", "bitwise operator |"),
    ("1 ^ 1 == 0", "bitwise operator ^"),
    ("1 << 1 == 2", "bitwise operator <<"),
    ("1 >> 1 == 0", "bitwise operator >>"),
    ("~1 == -2", "bitwise operator ~"),
    ("params @ params", "matrix operator @"),
    ("+1 == 1", "unary +"),
    ("params is null", "'is' is not allowed"),
    ("params is not null", "'is' is not allowed"),
    ("params[1:2] == []", "slices"),
    ("params[params.k] == 1", "subscripts take a literal"),
    ("params[1, 2] == 1", "subscripts take a literal"),
    ("params[True] == 1", "subscripts take a literal"),
    ("params[-'a'] == 1", "subscripts take a literal"),
    ("params[99999999999999999999] == 1", "subscripts take a literal"),
    ("(1).real == 1", "'.' and '[...]' can only read data from params or results"),
    ("[1, 2][0] == 1", "'.' and '[...]' can only read data from params or results"),
    ("'abc'.upper == 1", "'.' and '[...]' can only read data from params or results"),
    ("len(params).x == 1", "'.' and '[...]' can only read data from params or results"),
    ("true.x", "'.' and '[...]' can only read data from params or results"),
    ("b'x' == params", "bytes literals"),
    ("1j == params", "imaginary numbers"),
    ("... == params", "the literal ... is not allowed"),
    ("[*params] == []", "unpacking with *"),
    ("await params", "await"),
    ("(yield)", "yield"),
    ("x = 1", "assignments"),
    ("params.x += 1", "assignments"),
    ("del params", "del statements"),
    ("def f(): pass", "function definitions"),
    ("class A: pass", "class definitions"),
    ("for x in params: pass", "loops"),
    ("while true: pass", "loops"),
    ("if true: pass", "if statements"),
    ("with params: pass", "with statements"),
    ("assert true", "assert statements"),
    ("raise params", "raise statements"),
    ("try: pass\nexcept: pass", "try statements"),
    ("pass", "pass statements"),
    ("true\nfalse", "single expression"),
    ("true; false", "single expression"),
    ("params.a && params.b", "'&&' is not part of the language: use and"),
    ("params.a || params.b", "'||' is not part of the language: use or"),
    ("1 === 1", "use =="),
    ("", "condition is empty"),
    ("  \n ", "condition is empty"),
    ("(", "syntax error"),
    ("'abc", "syntax error: unterminated string literal"),
    ("1 +", "syntax error: invalid syntax (at the end)"),
    ("params.if == 1", "syntax error"),
    ("a\0b", "NUL"),
    ("params.x == 9223372036854775809", "integer literals must be at most 2**63"),
    ("params.x == -9223372036854775809", "integer literals must be at most 2**63"),
    ("1e999 == params.x", "number literal is too large"),
    ("x" * (MAX_TEXT_LENGTH + 1), "condition is too long (1001 characters; at most 1000)"),
    ("not " * MAX_DEPTH + "true", "nested too deeply"),
    ("-" * 60 + "1 == 1", "nested too deeply"),
    ("[" * 60 + "]" * 60 + " == []", "nested too deeply"),
    ("1" + " + 1" * 60 + " == 61", "nested too deeply"),
    ("true" + " and (true" * 60 + ")" * 60, "nested too deeply"),
    ("params" + ".a" * 60 + " == null", "nested too deeply"),
    ("len(" * 60 + "params" + ")" * 60 + " == 0", "nested too deeply"),
]


@pytest.mark.parametrize(("text", "fragment"), REFUSED)
def test_refused_at_parse_time(text: str, fragment: str) -> None:
    with pytest.raises(ConditionError) as caught:
        parse_condition(text)
    assert fragment in str(caught.value)


def test_refusals_say_where() -> None:
    with pytest.raises(ConditionError, match=r"unknown name 'os'.*\(at column 15\)"):
        parse_condition("params.a and  os.x")
    with pytest.raises(ConditionError, match=r"\(at column 3\)"):
        parse_condition("  os")
    with pytest.raises(ConditionError, match=r"\(at line 2, column 6\)"):
        parse_condition("(true\n and os)")


def test_text_that_is_not_text() -> None:
    # YAML reads `when: true` as a boolean.
    with pytest.raises(ConditionError, match="condition must be text, got boolean true"):
        parse_condition(True)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "true" + " " * (MAX_TEXT_LENGTH - 4),
        "not " * (MAX_DEPTH - 1) + "true",
        "params" + ".a" * (MAX_DEPTH - 2) + " == null",
        "9223372036854775808 > 0",
        "-9223372036854775808 < 0",
    ],
)
def test_limits_are_inclusive(text: str) -> None:
    assert isinstance(parse_condition(text).evaluate({}, {}), bool)


# ---------------------------------------------------------------------------------------
# (d) nothing reaches Python objects


@pytest.mark.parametrize(
    "text",
    [
        "params.__class__ == null",
        "params.__class__.__bases__ == null",
        "params.__init__.__globals__ == null",
        "params['__class__'] == null",
        "params.get == null",
        "params.items == null",
        "params.values == null",
        "params.order.items.append == null",
        "params.region.upper == null",
        "params.threshold.real == null",
        "results.__class__.__mro__ == null",
        "results.check.__dict__ == null",
        "results.check.ok.__class__ == null",
    ],
)
def test_dunder_and_method_names_are_only_data_keys(text: str) -> None:
    assert holds(text) is True


def test_dunder_keys_in_the_data_are_ordinary_keys() -> None:
    assert holds("params.__class__ == 'mine'", {"__class__": "mine"}, {}) is True


def test_objects_that_are_not_json_are_not_read_through() -> None:
    namespace: Any = SimpleNamespace(x=1, secret="s")
    assert holds("params.x == null and params.secret == null", namespace, {}) is True
    assert holds("params.obj.x == null", {"obj": namespace}, {}) is True
    with pytest.raises(ConditionError, match="Python SimpleNamespace"):
        holds("params.obj == params.obj", {"obj": namespace}, {})
    with pytest.raises(ConditionError, match="len\\(\\) needs a string, list or object"):
        holds("len(params.obj) == 2", {"obj": namespace}, {})


def test_the_module_never_compiles_or_executes_text() -> None:
    tree = ast.parse(Path(conditions.__file__).read_text())
    called = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not called & {"eval", "exec", "compile", "getattr", "__import__", "setattr"}
    modes = [
        keyword_.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for keyword_ in node.keywords
        if keyword_.arg == "mode"
    ]
    assert all(isinstance(mode, ast.Constant) for mode in modes)


# ---------------------------------------------------------------------------------------
# (e) evaluation errors name the operator and the kinds of operands

EVALUATION_ERRORS: list[tuple[str, tuple[str, ...]]] = [
    ('"a" < 1', ("'<'", 'string "a"', "number 1")),
    ("null < 1", ("'<'", "null", "number")),
    ("results.check.flag > 0.5", ("'>'", "null", "number")),
    ("[1] <= [2]", ("'<='", "list")),
    ("true >= false", ("'>='", "boolean")),
    ("len(5) == 1", ("len()", "number 5")),
    ("len(null) == 0", ("len()", "null")),
    ("len(true) == 0", ("len()", "boolean")),
    ("1 / 0 == 0", ("division by zero", "/")),
    ("1 % 0.0 == 0", ("division by zero", "%")),
    ('"a" + "b" == "ab"', ("'+'", "string")),
    ("[1] * 3 == [1, 1, 1]", ("'*'", "list")),
    ("true + 1 == 2", ("'+'", "boolean true", "number 1")),
    ("params.n - 1 == 0", ("'-'", "null")),
    ("-true == -1", ("unary '-'", "boolean")),
    ("-'a' == 1", ("unary '-'", "string")),
    ("1 in 5", ("'in'", "number 5")),
    ("1 not in 'abc'", ("'not in'", "string", "number 1")),
    ("1 in params", ("'in'", "object", "number 1")),
    ("'a' in null", ("'in'", "null")),
    ("not 1", ("'not'", "number 1")),
    ("not params.n", ("'not'", "null")),
    ("params.missing and true", ("'and'", "null")),
    ("true and 'yes'", ("'and'", 'string "yes"')),
    ("false or 0", ("'or'", "number 0")),
    ("3", ("condition must be true or false, got 3",)),
    ("null", ("condition must be true or false, got null",)),
    ("'yes'", ('condition must be true or false, got "yes"',)),
    ("params.order.items", ('condition must be true or false, got ["a", "b"]',)),
    ("params", ("condition must be true or false, got {",)),
    ("1 + 1", ("condition must be true or false, got 2",)),
    ("9223372036854775807 * 2 > 0", ("'*'", "2**63")),
    ("9223372036854775808 + 1 > 0", ("'+'", "2**63")),
    ("-9223372036854775808 - 1 < 0", ("'-'", "2**63")),
    ("-params.huge < 0", ("'-'", "2**63")),
    ("1e308 * 10 > 0", ("'*'", "too large")),
    ("params.huge * 1.5 > 0", ("'*'", "too large")),
    ("params.huge / 3 > 0", ("'/'", "too large")),
    ("params.huge + 1 > 0", ("'+'", "2**63")),
    ("params.huge < 'a'", ("'<'", "number", "string")),
]


@pytest.mark.parametrize(("text", "fragments"), EVALUATION_ERRORS)
def test_evaluation_errors(text: str, fragments: tuple[str, ...]) -> None:
    condition = parse_condition(text)
    with pytest.raises(ConditionError) as caught:
        condition.evaluate(PARAMS, RESULTS)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(ConditionError) as caught:
        holds("params.x", {"x": "y" * 500}, {})
    assert len(str(caught.value)) < 120


def test_integers_too_long_to_print_still_give_a_message() -> None:
    with pytest.raises(ConditionError, match=r"got number$"):
        holds("params.x", {"x": 10**5000}, {})
    with pytest.raises(
        ConditionError, match="'<' needs two numbers or two strings, got number and"
    ):
        holds("params.x < 'a'", {"x": 10**5000}, {})


def test_very_deep_data_compares_without_recursion_error() -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    assert holds("params.a == params.b", {"a": deep, "b": deep}, {}) is True
    assert holds("params.a == [[1]]", {"a": deep}, {}) is False
    with pytest.raises(ConditionError, match="got list"):
        holds("params.a", {"a": deep}, {})


# ---------------------------------------------------------------------------------------
# (f) properties

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4)
)
keys = st.sampled_from(["a", "b", "c-d", "e.f", "", " ", "__class__", "keys", "if", "0"])
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=16,
)
json_objects = st.dictionaries(keys, json_values, max_size=5)


def accessor(key: str | int) -> str:
    if isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key):
        return f".{key}"
    return f"[{key!r}]"


def reference_lookup(value: Any, path: list[str | int]) -> Any:
    """What a path reads, the slow obvious way."""
    for key in path:
        if isinstance(value, dict) and isinstance(key, str):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            value = None
    return value


def writable(value: Any) -> bool:
    """Whether a value can be written as a literal: no objects, no integers beyond 2**63."""
    if isinstance(value, list):
        return all(writable(item) for item in value)
    return not isinstance(value, dict) and not (is_int(value) and abs(value) > 2**63)


def literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(literal(item) for item in value) + "]"
    return repr(value)


@st.composite
def paths(draw: st.DrawFn, start: Any) -> list[str | int]:
    """Keys that mostly follow the data (to go deep) and sometimes miss."""
    path: list[str | int] = []
    value = start
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        follow = draw(st.booleans())
        key: str | int
        if follow and isinstance(value, dict) and value:
            key = draw(st.sampled_from(sorted(value)))
        elif follow and isinstance(value, list) and value:
            key = draw(st.integers(min_value=-len(value), max_value=len(value) - 1))
        else:
            key = draw(keys | st.integers(min_value=-3, max_value=3))
        path.append(key)
        value = reference_lookup(value, [key])
    return path


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@CHECK
@given(params=json_objects, data=st.data())
def test_paths_read_what_python_reads(params: dict[str, Any], data: st.DataObject) -> None:
    path = data.draw(paths(params))
    expected = reference_lookup(params, path)
    suffix = "".join(accessor(key) for key in path)
    for text, results in ((f"params{suffix}", {}), (f"results['s']{suffix}", {"s": params})):
        assert holds(f"{text} == null", params, results) is (expected is None)
        if isinstance(expected, list | dict):
            assert holds(f"len({text}) == {len(expected)}", params, results) is True
        if isinstance(expected, dict):
            for key in expected:
                assert holds(f"{key!r} in {text}", params, results) is True
        if writable(expected):
            assert holds(f"{text} == {literal(expected)}", params, results) is True


Boolean = tuple[str, bool, int]  # text, value, AST depth
bool_leaves = st.sampled_from(
    [("true", True, 1), ("false", False, 1), ("True", True, 1), ("False", False, 1)]
)


def combine(children: st.SearchStrategy[Boolean]) -> st.SearchStrategy[Boolean]:
    def negate(a: Boolean) -> Boolean:
        return (f"not {a[0]}", not a[1], a[2] + 1)

    def both(pair: tuple[Boolean, Boolean]) -> Boolean:
        (a, b) = pair
        return (f"({a[0]} and {b[0]})", a[1] and b[1], max(a[2], b[2]) + 1)

    def either(pair: tuple[Boolean, Boolean]) -> Boolean:
        (a, b) = pair
        return (f"({a[0]} or {b[0]})", a[1] or b[1], max(a[2], b[2]) + 1)

    return (
        children.map(negate)
        | st.tuples(children, children).map(both)
        | st.tuples(children, children).map(either)
    )


@CHECK
@given(st.recursive(bool_leaves, combine, max_leaves=24))
def test_boolean_logic_agrees_with_python(expression: Boolean) -> None:
    text, expected, depth = expression
    if depth > MAX_DEPTH:
        with pytest.raises(ConditionError, match="nested too deeply"):
            parse_condition(text)
    else:
        assert parse_condition(text).evaluate({}, {}) is expected


@CHECK
@given(
    st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=10),
    st.lists(st.sampled_from(["and", "or"]), min_size=9, max_size=9),
)
def test_precedence_without_parentheses_agrees_with_python(
    terms: list[tuple[bool, bool]], joins: list[str]
) -> None:
    words = [
        ("not " if negated else "") + ("true" if value else "false") for negated, value in terms
    ]
    text = words[0] + "".join(
        f" {join} {word}" for join, word in zip(joins, words[1:], strict=False)
    )
    # not binds tighter than and, which binds tighter than or.
    groups: list[list[bool]] = [[]]
    for index, (negated, value) in enumerate(terms):
        if index and joins[index - 1] == "or":
            groups.append([])
        groups[-1].append(value is not negated)
    expected = any(all(group) for group in groups)
    assert parse_condition(text).evaluate({}, {}) is expected


grammar_leaves = st.one_of(
    st.sampled_from(
        [
            "0",
            "1",
            "-1",
            "2.5",
            "1e308",
            "0.0",
            "9223372036854775808",
            "'a'",
            '"b"',
            "''",
            "true",
            "false",
            "null",
            "True",
            "None",
            "[]",
            "[1, 'a']",
            "params",
            "params.a",
            "params.a.b",
            "params['a'][0]",
            "params.__class__",
            "results.s",
            "results['s-1'].x",
            "results.s[-1]",
            "results['e.f'].a[2].b",
        ]
    ),
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
BINARY_OPERATORS = [
    "+",
    "-",
    "*",
    "/",
    "%",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "in",
    "not in",
    "and",
    "or",
]


def grammar(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.builds("-{}".format, children),
        st.builds("not {}".format, children),
        st.builds("({})".format, children),
        st.builds("len({})".format, children),
        st.builds("[{}, {}]".format, children, children),
        st.builds("({} {} {})".format, children, st.sampled_from(BINARY_OPERATORS), children),
        st.builds("{} < {} <= {}".format, children, children, children),
    )


grammar_expressions = st.recursive(grammar_leaves, grammar, max_leaves=12)
# Comparisons at the top make true/false (not only errors) a common outcome.
grammar_conditions = grammar_expressions | st.builds(
    "({}) {} ({})".format,
    grammar_expressions,
    st.sampled_from(["==", "!=", "in", "not in"]),
    grammar_expressions,
)
odd_scalars = st.sampled_from([10**4000, float("nan"), float("inf"), -(2**80), "", "s" * 100])
fuzz_values = st.recursive(
    json_scalars | odd_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=10,
)
fuzz_params = st.dictionaries(st.sampled_from(["a", "b", "__class__"]), fuzz_values, max_size=3)
fuzz_results = st.fixed_dictionaries(
    {}, optional={"s": fuzz_values, "s-1": fuzz_values, "e.f": fuzz_values}
)


def outcome(text: str, params: Mapping[str, Any], results: Mapping[str, Any]) -> bool | None:
    """True/false, or None for a ConditionError; anything else raised fails the test."""
    try:
        return parse_condition(text).evaluate(params, results)
    except ConditionError:
        return None


@CHECK
@given(grammar_conditions, fuzz_params, fuzz_results)
def test_grammar_expressions_only_ever_raise_condition_error(
    text: str, params: dict[str, Any], results: dict[str, Any]
) -> None:
    assert outcome(text, params, results) in (True, False, None)


@CHECK
@given(st.text(max_size=200))
def test_arbitrary_text_only_ever_raises_condition_error(text: str) -> None:
    assert outcome(text, PARAMS, RESULTS) in (True, False, None)


@CHECK
@given(st.text(alphabet="params.results[]'\"0123456789 +-*/%<>=!()andortlen,_:", max_size=80))
def test_grammar_like_text_only_ever_raises_condition_error(text: str) -> None:
    assert outcome(text, PARAMS, RESULTS) in (True, False, None)


@CHECK
@given(st.lists(st.sampled_from(["true", "false"]), min_size=1, max_size=5))
def test_list_literals_compare_like_lists(items: list[str]) -> None:
    text = "[" + ", ".join(items) + "]"
    assert holds(f"{text} == params.x", {"x": [item == "true" for item in items]}, {}) is True
    assert holds(f"len({text}) == {len(items)}", {}, {}) is True
