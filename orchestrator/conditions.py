"""The ``when:`` condition language: a small, safe expression over params and results.

A step with ``when:`` runs only if its condition is true; it reads the workflow's
``params`` and the results of the steps it depends on.

Values are JSON data: ``null``, booleans, numbers, strings, lists and objects.

Literals
    Numbers (``3``, ``-2.5``, ``1e3``), strings in single or double quotes, ``true``,
    ``false`` and ``null`` (Python's ``True``, ``False`` and ``None`` work too), and lists
    ``[1, "a", null]``. Integers are limited to 2**63 in absolute value.

Data
    Two roots: ``params`` (the workflow's params) and ``results`` (the results of the
    steps this one depends on, by step id). Read into them with dots
    (``params.order.total``, ``results.check.ok``) or with a literal key or index in
    brackets (``results["train-1"].score``, ``results.split.items[0]``,
    ``params["weird key"]``; a negative index counts from the end). A name after a dot
    must look like a Python identifier and not be a keyword (``if``, ``not``, ...); any
    other key, including step ids with ``-`` or ``.``, needs the bracket form. ``results``
    must always be followed by a step id; ``params`` may stand alone
    (``"region" in params``).

    A missing key or index, or any read through ``null`` or through something that is
    not an object or a list, gives ``null`` rather than an error: when ``flag`` is absent,
    ``results.check.flag == true`` is simply false. Names after a dot are always data keys,
    never anything else: ``params.__class__`` is the key ``"__class__"``, so it is ``null``.

Operators
    ``==`` and ``!=`` compare any two values (``true`` is not equal to ``1``);
    ``<``, ``<=``, ``>``, ``>=`` compare two numbers or two strings, and chain as in
    ``0 < params.ratio <= 1``; ``x in y`` and ``x not in y`` look for an item in a list, a
    key in an object or a substring in a string; ``and``, ``or``, ``not`` take ``true`` or
    ``false`` (nothing else counts as true or false) and ``and``/``or`` stop as soon as
    the answer is known; ``+``, ``-``, ``*``, ``/``, ``%`` and unary ``-`` work on numbers
    only; parentheses group; ``len(x)`` gives the length of a string, list or object.

Anything else is refused when the workflow is submitted: other names and function calls,
``**``, ``//``, bitwise operators, ``is``, lambdas, comprehensions, f-strings, object and
tuple literals, conditional expressions, ``:=``, statements. A condition is at most 1,000
characters and 50 levels deep. The whole condition must come out ``true`` or ``false``.
Mistakes found while evaluating, such as comparing a string with a number (``"a" < 1``),
ordering ``null`` (a missing value; guard with ``results.s.x != null and ...``), dividing by
zero or an integer result beyond 2**63, fail the condition with a message naming the
operator and the kinds of values it got.

The text is parsed with :func:`ast.parse` only to get a syntax tree; the tree is checked
against a short list of allowed node types and translated into this module's own small
expression objects, and only those are evaluated. Nothing is compiled or executed, and
data is read only by looking keys up in mappings and indexes up in lists.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import operator
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

MAX_TEXT_LENGTH: Final = 1000
MAX_DEPTH: Final = 50
MAX_INT: Final = 2**63

RESULTS_NEED_STEP = 'results must be followed by a step id: results.<id> or results["<id>"]'

_WORD_LITERALS: Final[Mapping[str, bool | None]] = {"true": True, "false": False, "null": None}
_ROOTS: Final = ("params", "results")


class ConditionError(ValueError):
    """A condition cannot be parsed or evaluated; the message is written for the user."""


# ---------------------------------------------------------------------------------------
# Values


def _is_number(value: Any) -> bool:
    # bool is an int subclass in Python, but in JSON (and here) it is not a number.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_list(value: Any) -> bool:
    return isinstance(value, list | tuple)


def _kind(value: Any) -> str:
    """The JSON kind of a value, in the words error messages use."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    if _is_list(value):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return f"Python {type(value).__name__}"


def _render(value: Any) -> str:
    """A short JSON rendering for messages; never raises, whatever the data holds."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=lambda v: f"<{_kind(v)}>")
    except (TypeError, ValueError, RecursionError):
        # Keys that are not strings, cycles, integers too long to print, very deep data.
        return _kind(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(value: Any) -> str:
    kind, rendered = _kind(value), _render(value)
    return kind if rendered == kind else f"{kind} {rendered}"


def _equal(left: Any, right: Any) -> bool:
    """JSON equality: kinds must match, so ``true != 1`` and ``[0] != [false]``."""
    # A stack, not recursion: results can be nested deeper than Python's recursion limit.
    pending = [(left, right)]
    while pending:
        a, b = pending.pop()
        kind = _kind(a)
        if kind != _kind(b):
            return False
        if kind == "list":
            if len(a) != len(b):
                return False
            pending.extend(zip(a, b, strict=True))
        elif kind == "object":
            if a.keys() != b.keys():
                return False
            pending.extend((a[key], b[key]) for key in a)
        elif kind.startswith("Python"):
            raise ConditionError(f"cannot compare a {kind} value; conditions read JSON data")
        elif a != b:
            return False
    return True


def _lookup(value: Any, key: str | int) -> Any:
    # Only mapping keys and list items are reachable; attributes never are.
    if isinstance(value, Mapping):
        return value.get(key) if isinstance(key, str) else None
    if _is_list(value) and isinstance(key, int) and -len(value) <= key < len(value):
        return value[key]
    return None


def _bounded(symbol: str, result: Any) -> Any:
    if isinstance(result, int) and abs(result) > MAX_INT:
        raise ConditionError(f"'{symbol}' gives an integer beyond 2**63 in absolute value")
    if isinstance(result, float) and not math.isfinite(result):
        raise ConditionError(f"'{symbol}' gives a number too large to represent")
    return result


_ARITHMETIC: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "%": operator.mod,
}


def _arithmetic(symbol: str, left: Any, right: Any) -> Any:
    if not (_is_number(left) and _is_number(right)):
        raise ConditionError(
            f"'{symbol}' needs two numbers, got {_describe(left)} and {_describe(right)}"
        )
    if symbol in ("/", "%") and right == 0:
        raise ConditionError(f"division by zero: {_render(left)} {symbol} {_render(right)}")
    try:
        result = _ARITHMETIC[symbol](left, right)
    except OverflowError:
        # Huge integers from the data do not fit a float when mixed with one.
        raise ConditionError(f"'{symbol}' gives a number too large to represent") from None
    return _bounded(symbol, result)


def _negate(value: Any) -> Any:
    if not _is_number(value):
        raise ConditionError(f"unary '-' needs a number, got {_describe(value)}")
    return _bounded("-", -value)


_ORDERINGS: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _order(symbol: str, left: Any, right: Any) -> bool:
    both_numbers = _is_number(left) and _is_number(right)
    if both_numbers or (isinstance(left, str) and isinstance(right, str)):
        return bool(_ORDERINGS[symbol](left, right))
    raise ConditionError(
        f"'{symbol}' needs two numbers or two strings, got {_describe(left)} and {_describe(right)}"
    )


def _contains(symbol: str, item: Any, container: Any) -> bool:
    if _is_list(container):
        return any(_equal(item, element) for element in container)
    if isinstance(container, str | Mapping):
        if not isinstance(item, str):
            where = "a string" if isinstance(container, str) else "an object"
            raise ConditionError(
                f"'{symbol}' with {where} on the right needs a string on the left, "
                f"got {_describe(item)}"
            )
        return item in container
    raise ConditionError(
        f"'{symbol}' needs a list, object or string on the right, got {_describe(container)}"
    )


_COMPARISONS: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "==": _equal,
    "!=": lambda a, b: not _equal(a, b),
    "<": functools.partial(_order, "<"),
    "<=": functools.partial(_order, "<="),
    ">": functools.partial(_order, ">"),
    ">=": functools.partial(_order, ">="),
    "in": functools.partial(_contains, "in"),
    "not in": lambda a, b: not _contains("not in", a, b),
}


def _truth(symbol: str, value: Any) -> bool:
    # No truthiness: a missing value (null) or a number must not quietly count as false.
    if not isinstance(value, bool):
        raise ConditionError(f"'{symbol}' needs true or false, got {_describe(value)}")
    return value


def _length(value: Any) -> int:
    if isinstance(value, str | Mapping) or _is_list(value):
        return len(value)
    raise ConditionError(f"len() needs a string, list or object, got {_describe(value)}")


# ---------------------------------------------------------------------------------------
# The evaluated form: what a parsed condition is translated into


@dataclass(frozen=True)
class _Data:
    params: Mapping[str, Any]
    results: Mapping[str, Any]


class _Expr(ABC):
    @abstractmethod
    def run(self, data: _Data) -> Any: ...


@dataclass(frozen=True)
class _Literal(_Expr):
    value: bool | int | float | str | None

    def run(self, data: _Data) -> Any:
        return self.value


@dataclass(frozen=True)
class _List(_Expr):
    items: tuple[_Expr, ...]

    def run(self, data: _Data) -> Any:
        return [item.run(data) for item in self.items]


@dataclass(frozen=True)
class _Path(_Expr):
    root: str
    keys: tuple[str | int, ...]

    def run(self, data: _Data) -> Any:
        value: Any = data.params if self.root == "params" else data.results
        for key in self.keys:
            value = _lookup(value, key)
        return value


@dataclass(frozen=True)
class _Not(_Expr):
    operand: _Expr

    def run(self, data: _Data) -> Any:
        return not _truth("not", self.operand.run(data))


@dataclass(frozen=True)
class _Negate(_Expr):
    operand: _Expr

    def run(self, data: _Data) -> Any:
        return _negate(self.operand.run(data))


@dataclass(frozen=True)
class _Logic(_Expr):
    symbol: str  # "and" | "or"
    operands: tuple[_Expr, ...]

    def run(self, data: _Data) -> Any:
        # The value that decides the answer: false decides an 'and', true decides an 'or'.
        decisive = self.symbol == "or"
        for operand in self.operands:
            if _truth(self.symbol, operand.run(data)) is decisive:
                return decisive
        return not decisive


@dataclass(frozen=True)
class _Arithmetic(_Expr):
    symbol: str
    left: _Expr
    right: _Expr

    def run(self, data: _Data) -> Any:
        return _arithmetic(self.symbol, self.left.run(data), self.right.run(data))


@dataclass(frozen=True)
class _Compare(_Expr):
    first: _Expr
    symbols: tuple[str, ...]
    rest: tuple[_Expr, ...]

    def run(self, data: _Data) -> Any:
        # Python's chaining: each middle operand is evaluated once; stop at the first false.
        left = self.first.run(data)
        for symbol, operand in zip(self.symbols, self.rest, strict=True):
            right = operand.run(data)
            if not _COMPARISONS[symbol](left, right):
                return False
            left = right
        return True


@dataclass(frozen=True)
class _Len(_Expr):
    operand: _Expr

    def run(self, data: _Data) -> Any:
        return _length(self.operand.run(data))


# ---------------------------------------------------------------------------------------
# Parsing: Python's parser for the syntax tree, then a whitelist translation


_BINARY: Final[Mapping[type[ast.operator], str]] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Mod: "%",
}
_BINARY_REFUSED: Final[Mapping[type[ast.operator], str]] = {
    ast.Pow: "the exponent operator ** is not allowed",
    ast.FloorDiv: "floor division // is not allowed: use / (and compare)",
    ast.MatMult: "the matrix operator @ is not allowed",
    ast.LShift: "the bitwise operator << is not allowed",
    ast.RShift: "the bitwise operator >> is not allowed",
    ast.BitAnd: "the bitwise operator & is not allowed: use and",
    ast.BitOr: "the bitwise operator | is not allowed: use or",
    ast.BitXor: "the bitwise operator ^ is not allowed",
}
_COMPARE_OPS: Final[Mapping[type[ast.cmpop], str]] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_REFUSED: Final[Mapping[type[ast.AST], str]] = {
    ast.Lambda: "lambda functions are not allowed",
    ast.IfExp: "conditional expressions (x if c else y) are not allowed: use and/or",
    ast.Dict: "object literals {...} are not allowed",
    ast.Set: "set literals {...} are not allowed",
    ast.Tuple: "tuples are not allowed: write a list [a, b]",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.NamedExpr: "assignment expressions (:=) are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
    ast.Starred: "unpacking with * is not allowed",
    ast.Slice: "slices [a:b] are not allowed",
}
_STATEMENTS: Final[Mapping[type[ast.stmt], str]] = {
    ast.Import: "import statements",
    ast.ImportFrom: "import statements",
    ast.Assign: "assignments (to compare, use ==)",
    ast.AugAssign: "assignments",
    ast.AnnAssign: "assignments",
    ast.Delete: "del statements",
    ast.FunctionDef: "function definitions",
    ast.AsyncFunctionDef: "function definitions",
    ast.ClassDef: "class definitions",
    ast.For: "loops",
    ast.AsyncFor: "loops",
    ast.While: "loops",
    ast.If: "if statements",
    ast.With: "with statements",
    ast.AsyncWith: "with statements",
    ast.Try: "try statements",
    ast.TryStar: "try statements",
    ast.Raise: "raise statements",
    ast.Assert: "assert statements",
    ast.Return: "return statements",
    ast.Global: "global statements",
    ast.Nonlocal: "nonlocal statements",
    ast.Match: "match statements",
    ast.Pass: "pass statements",
    ast.Break: "break statements",
    ast.Continue: "continue statements",
}
_SYNTAX_HINTS: Final = (("&&", "use and"), ("||", "use or"), ("===", "use =="))


@dataclass(frozen=True)
class _Source:
    """The text as given, and where the part handed to the parser starts within it."""

    text: str
    lead_lines: int
    lead_columns: int

    @classmethod
    def of(cls, text: str) -> _Source:
        lead = text[: len(text) - len(text.lstrip())]
        return cls(text, lead.count("\n"), len(lead) - (lead.rfind("\n") + 1))

    @property
    def body(self) -> str:
        return self.text.strip()

    def where(self, line: int | None, column: int | None) -> str:
        """' (at column C)' for a 1-based position in ``body``, in the user's terms."""
        if line is None or column is None:
            return ""
        if line == 1:
            column += self.lead_columns
        if "\n" not in self.text:
            return f" (at column {column})"
        return f" (at line {line + self.lead_lines}, column {column})"


class _Translator:
    """Checks a syntax tree node by node and builds the evaluated form."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.references: set[str] = set()
        self.handlers: dict[type[ast.AST], Callable[[Any, int], _Expr]] = {
            ast.Constant: self.constant,
            ast.Name: self.name,
            ast.List: self.list,
            ast.Attribute: self.path,
            ast.Subscript: self.path,
            ast.UnaryOp: self.unary,
            ast.BinOp: self.binary,
            ast.BoolOp: self.logic,
            ast.Compare: self.compare,
            ast.Call: self.call,
        }

    def refuse(self, node: ast.expr, message: str) -> ConditionError:
        return ConditionError(message + self.source.where(node.lineno, node.col_offset + 1))

    def expr(self, node: ast.expr, depth: int) -> _Expr:
        if depth > MAX_DEPTH:
            raise self.refuse(
                node, f"condition is nested too deeply (more than {MAX_DEPTH} levels)"
            )
        handler = self.handlers.get(type(node))
        if handler is None:
            default = f"{type(node).__name__} expressions are not allowed"
            raise self.refuse(node, _REFUSED.get(type(node), default))
        return handler(node, depth)

    def constant(self, node: ast.Constant, depth: int) -> _Expr:
        value = node.value
        if value is None or isinstance(value, bool | str):
            return _Literal(value)
        if isinstance(value, int):
            if abs(value) > MAX_INT:
                raise self.refuse(node, "integer literals must be at most 2**63 in absolute value")
            return _Literal(value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise self.refuse(node, "number literal is too large")
            return _Literal(value)
        if isinstance(value, bytes):
            raise self.refuse(node, 'bytes literals (b"...") are not allowed')
        if isinstance(value, complex):
            raise self.refuse(node, "imaginary numbers (1j) are not allowed")
        raise self.refuse(node, f"the literal {ast.unparse(node)} is not allowed")

    def name(self, node: ast.Name, depth: int) -> _Expr:
        if node.id in _WORD_LITERALS:
            return _Literal(_WORD_LITERALS[node.id])
        if node.id == "params":
            return _Path("params", ())
        if node.id == "results":
            raise self.refuse(node, RESULTS_NEED_STEP)
        if node.id == "len":
            raise self.refuse(node, "len must be called: len(x)")
        raise self.refuse(node, f"unknown name {node.id!r}: use params.<key> or results.<step id>")

    def list(self, node: ast.List, depth: int) -> _Expr:
        return _List(tuple(self.expr(item, depth + 1) for item in node.elts))

    def path(self, node: ast.Attribute | ast.Subscript, depth: int) -> _Expr:
        keys: list[str | int] = []
        current: ast.expr = node
        while isinstance(current, ast.Attribute | ast.Subscript):
            if depth > MAX_DEPTH:
                raise self.refuse(
                    node, f"condition is nested too deeply (more than {MAX_DEPTH} levels)"
                )
            keys.append(self.key(current))
            current = current.value
            depth += 1
        keys.reverse()
        if isinstance(current, ast.Name) and current.id not in (*_ROOTS, *_WORD_LITERALS):
            self.name(current, depth)  # refuses unknown names and a bare `len`
        if not (isinstance(current, ast.Name) and current.id in _ROOTS):
            raise self.refuse(
                node,
                "'.' and '[...]' can only read data from params or results "
                '(params.order.total, results["train-1"].score)',
            )
        if current.id == "params":
            return _Path("params", tuple(keys))
        if not isinstance(keys[0], str):
            raise self.refuse(node, RESULTS_NEED_STEP)
        self.references.add(keys[0])
        return _Path("results", tuple(keys))

    def key(self, node: ast.Attribute | ast.Subscript) -> str | int:
        if isinstance(node, ast.Attribute):
            return node.attr
        index = node.slice
        sign = 1
        if isinstance(index, ast.UnaryOp) and isinstance(index.op, ast.USub):
            index, sign = index.operand, -1
        if isinstance(index, ast.Constant):
            value = index.value
            if isinstance(value, str) and sign == 1:
                return value
            if isinstance(value, int) and not isinstance(value, bool) and value <= MAX_INT:
                return sign * value
        if isinstance(index, ast.Slice):
            raise self.refuse(index, _REFUSED[ast.Slice])
        raise self.refuse(
            node.slice,
            'subscripts take a literal string key or integer index, like ["train-1"] or [0]',
        )

    def unary(self, node: ast.UnaryOp, depth: int) -> _Expr:
        operand = self.expr(node.operand, depth + 1)
        if isinstance(node.op, ast.Not):
            return _Not(operand)
        if isinstance(node.op, ast.USub):
            return _Negate(operand)
        if isinstance(node.op, ast.UAdd):
            raise self.refuse(node, "unary + is not allowed")
        raise self.refuse(node, "the bitwise operator ~ is not allowed: use not")

    def binary(self, node: ast.BinOp, depth: int) -> _Expr:
        symbol = _BINARY.get(type(node.op))
        if symbol is None:
            default = f"the operator {type(node.op).__name__} is not allowed"
            raise self.refuse(node, _BINARY_REFUSED.get(type(node.op), default))
        return _Arithmetic(
            symbol, self.expr(node.left, depth + 1), self.expr(node.right, depth + 1)
        )

    def logic(self, node: ast.BoolOp, depth: int) -> _Expr:
        symbol = "and" if isinstance(node.op, ast.And) else "or"
        return _Logic(symbol, tuple(self.expr(value, depth + 1) for value in node.values))

    def compare(self, node: ast.Compare, depth: int) -> _Expr:
        symbols: list[str] = []
        for op in node.ops:
            symbol = _COMPARE_OPS.get(type(op))
            if symbol is None:
                raise self.refuse(node, "'is' is not allowed: use == or !=")
            symbols.append(symbol)
        return _Compare(
            self.expr(node.left, depth + 1),
            tuple(symbols),
            tuple(self.expr(value, depth + 1) for value in node.comparators),
        )

    def call(self, node: ast.Call, depth: int) -> _Expr:
        if not (isinstance(node.func, ast.Name) and node.func.id == "len"):
            raise self.refuse(node, "function calls other than len() are not allowed")
        if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            raise self.refuse(node, "len() takes exactly one argument: len(x)")
        return _Len(self.expr(node.args[0], depth + 1))


def _parse_expression(source: str) -> ast.Expression:
    # Python warns about odd escapes like "\d"; the outcome must not depend on the
    # process's warning filters (an "error" filter turns the warning into a SyntaxError).
    with warnings.catch_warnings(action="ignore"):
        return ast.parse(source, mode="eval")


def _parse_statements(source: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings(action="ignore"):
            return ast.parse(source, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _syntax_problem(source: _Source, error: SyntaxError) -> str:
    """Explain a syntax error, naming statements (import, assignment) when that is it."""
    module = _parse_statements(source.body)
    if module is not None:
        for statement in module.body:
            what = _STATEMENTS.get(type(statement))
            if what is not None:
                return f"a condition is a single expression; {what} are not allowed"
        if len(module.body) > 1:
            return "a condition is a single expression, not several lines of them"
    for token, hint in _SYNTAX_HINTS:
        if token in source.body:
            return f"{token!r} is not part of the language: {hint}"
    message = error.msg.split(" (detected at")[0]
    # Python reports offset 0 when the text ends in the middle of an expression.
    where = " (at the end)" if not error.offset else source.where(error.lineno, error.offset)
    return f"syntax error: {message}{where}"


def _tree(source: _Source) -> ast.Expression:
    if not source.body:
        raise ConditionError("condition is empty")
    if "\0" in source.body:
        # Python versions disagree on how to report it (ValueError or SyntaxError).
        raise ConditionError("condition contains a NUL character")
    try:
        return _parse_expression(source.body)
    except SyntaxError as error:
        raise ConditionError(_syntax_problem(source, error)) from None
    except (RecursionError, MemoryError):
        raise ConditionError("condition is too complex to parse") from None


@dataclass(frozen=True)
class _Program:
    expr: _Expr
    references: frozenset[str]


@functools.lru_cache(maxsize=512)
def _compile_text(text: str) -> _Program:
    # Cached because a workflow's conditions are re-read for every run; the cached
    # program is immutable, so sharing it between callers and threads is safe.
    if len(text) > MAX_TEXT_LENGTH:
        raise ConditionError(
            f"condition is too long ({len(text)} characters; at most {MAX_TEXT_LENGTH})"
        )
    source = _Source.of(text)
    translator = _Translator(source)
    expr = translator.expr(_tree(source).body, 1)
    return _Program(expr, frozenset(translator.references))


def _compile(text: object) -> _Program:
    if not isinstance(text, str):
        # YAML reads `when: true` as a boolean; say so instead of failing obscurely.
        raise ConditionError(f"condition must be text, got {_describe(text)}")
    return _compile_text(text)


# ---------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class Condition:
    """A parsed ``when:`` condition.

    ``references`` holds the step ids the condition reads through ``results``; a step's
    condition should only name the steps it depends on.
    """

    text: str
    references: frozenset[str]
    _expr: _Expr = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Built from the text, so a Condition made by hand is as checked as a parsed one.
        program = _compile(self.text)
        if program.references != self.references:
            raise ConditionError(
                f"references {sorted(self.references)} do not match the condition, "
                f"which reads {sorted(program.references)}"
            )
        object.__setattr__(self, "_expr", program.expr)

    def evaluate(self, params: Mapping[str, Any], results: Mapping[str, Any]) -> bool:
        """True or false for these params and dependency results (step id -> result).

        Raises :class:`ConditionError` for a type error or a value that is not a boolean.
        """
        value = self._expr.run(_Data(params, results))
        if not isinstance(value, bool):
            raise ConditionError(f"condition must be true or false, got {_render(value)}")
        return value


def parse_condition(text: str) -> Condition:
    """Parse and check a condition; raises :class:`ConditionError` saying what is wrong."""
    return Condition(text, _compile(text).references)


__all__ = [
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_TEXT_LENGTH",
    "Condition",
    "ConditionError",
    "parse_condition",
]
