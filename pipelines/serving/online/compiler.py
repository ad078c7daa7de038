"""Compile the feature definitions' SQL expressions into plain Python functions.

The batch engines hand ``Feature.expression`` / ``Aggregate.value`` /
``Aggregate.filter`` text to DuckDB or Spark. The online engine evaluates the
very same text one transaction at a time, so it parses each expression with
sqlglot and generates Python source with SQL semantics:

* ``NULL`` is ``None`` and propagates through arithmetic and comparisons
  (only where a column can be null: the generated code stays inline and fast
  for the common non-null case);
* ``/`` is floating division (DuckDB 2.0), ``x / 0`` is +/-inf or NaN, ``%``
  truncates towards zero, ``round`` rounds half away from zero, ``floor``
  keeps a double a double, ``greatest`` ignores NULLs;
* ``CASE`` takes a branch only when its condition is true (not NULL).

An expression using SQL this compiler does not know raises
:class:`UnsupportedExpression` at import time of the online engine, never a
silently different value.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp


class UnsupportedExpression(ValueError):
    """A definition uses SQL the online compiler cannot evaluate exactly."""


# --- runtime helpers with SQL semantics (referenced by generated code) --------------------
def sql_div(a: float, b: float) -> float:
    """DuckDB 2.0 division: always floating point, IEEE results for a zero divisor."""
    if b == 0:
        if a == 0 or a != a:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def sql_mod(a: Any, b: Any) -> Any:
    """``%`` truncating towards zero (C semantics), for integers and doubles."""
    if isinstance(a, int) and isinstance(b, int):
        if b == 0:
            return None
        remainder = abs(a) % abs(b)
        return -remainder if a < 0 else remainder
    return math.fmod(a, b) if b != 0 else math.nan


def sql_round(x: float, decimals: int = 0) -> float:
    """``round`` half away from zero, returning a double as DuckDB does."""
    if x != x or math.isinf(x):
        return x
    if decimals == 0:
        return float(math.copysign(math.floor(abs(x) + 0.5), x))
    scale = 10.0**decimals
    return math.copysign(math.floor(abs(x) * scale + 0.5), x) / scale


def sql_floor(x: Any) -> Any:
    return x if isinstance(x, int) else float(math.floor(x)) if math.isfinite(x) else x


def sql_ln(x: float) -> float:
    if x > 0:
        return math.log(x)
    return -math.inf if x == 0 else math.nan


def sql_sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0 else math.nan


def sql_greatest(*values: Any) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def sql_coalesce(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def null_safe(fn: Callable[..., Any], arity: int) -> Callable[..., Any]:
    """``fn`` that returns NULL when any argument is NULL (SQL strictness)."""
    if arity == 1:
        return lambda a: None if a is None else fn(a)
    if arity == 2:  # noqa: PLR2004
        return lambda a, b: None if a is None or b is None else fn(a, b)
    return lambda *args: None if any(a is None for a in args) else fn(*args)


def sql_not(x: Any) -> Any:
    return None if x is None else not x


_FUNCTIONS: dict[str, Any] = {
    "_div": sql_div,
    "_mod": sql_mod,
    "_round": sql_round,
    "_floor": sql_floor,
    "_ln": sql_ln,
    "_sqrt": sql_sqrt,
    "_sin": math.sin,
    "_cos": math.cos,
    "_exp": math.exp,
    "_abs": abs,
    "_neg": operator.neg,
    "_float": float,
    "_int": int,
}
# (Python operator, helper name) per SQL binary operator; helpers serve the NULL-aware path.
_BINARY = {
    exp.Add: ("+", "_add"),
    exp.Sub: ("-", "_sub"),
    exp.Mul: ("*", "_mul"),
    exp.EQ: ("==", "_eq"),
    exp.NEQ: ("!=", "_ne"),
    exp.GT: (">", "_gt"),
    exp.GTE: (">=", "_ge"),
    exp.LT: ("<", "_lt"),
    exp.LTE: ("<=", "_le"),
}
_OPERATORS = {
    "_add": operator.add, "_sub": operator.sub, "_mul": operator.mul, "_eq": operator.eq,
    "_ne": operator.ne, "_gt": operator.gt, "_ge": operator.ge, "_lt": operator.lt,
    "_le": operator.le,
}
RUNTIME: dict[str, Any] = {
    "math": math,
    "_greatest": sql_greatest,
    "_coalesce": sql_coalesce,
    "_not": sql_not,
    **_FUNCTIONS,
    # ``_n_<helper>``: the NULL-propagating variant, built once rather than per call.
    **{f"_n{name}": null_safe(fn, 1) for name, fn in _FUNCTIONS.items()},
    **{f"_n{name}": null_safe(fn, 2) for name, fn in _OPERATORS.items()},
    "_n_div": null_safe(sql_div, 2),
    "_n_mod": null_safe(sql_mod, 2),
    "_n_round": null_safe(sql_round, 3),
}

_UNARY_FUNCTIONS = {
    exp.Ln: "_ln",
    exp.Sqrt: "_sqrt",
    exp.Floor: "_floor",
    exp.Sin: "_sin",
    exp.Cos: "_cos",
    exp.Exp: "_exp",
    exp.Abs: "_abs",
}
_CASTS = {"DOUBLE": "_float", "FLOAT": "_float", "BIGINT": "_int", "INT": "_int"}


@dataclass(frozen=True)
class Compiled:
    """Python source for one expression, and whether its value can be NULL."""

    source: str
    nullable: bool


def parse(sql: str) -> exp.Expression:
    try:
        return sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise UnsupportedExpression(f"cannot parse {sql!r}: {exc}") from exc


def referenced_columns(sql: str) -> set[str]:
    """Every column name an expression reads."""
    return {column.name for column in parse(sql).find_all(exp.Column)}


class ExpressionCompiler:
    """Turns SQL expressions into Python expressions over named local variables.

    ``variables`` maps each column name to the Python expression that reads it
    (e.g. ``"amount" -> "amount"`` or ``"ts_us" -> "env['ts_us']"``);
    ``nullable`` names the columns whose value may be ``None``.
    """

    def __init__(self, variables: Mapping[str, str], nullable: Iterable[str]) -> None:
        self.variables = dict(variables)
        self.nullable = set(nullable)

    def compile(self, sql: str, condition: bool = False) -> Compiled:
        """``condition=True`` for a predicate (FILTER), where NULL and FALSE mean the same."""
        return self._node(parse(sql), sql, condition)

    # --- nodes ---------------------------------------------------------------------------
    def _node(  # noqa: PLR0911, PLR0912
        self, node: exp.Expression, sql: str, condition: bool = False
    ) -> Compiled:
        if isinstance(node, exp.Paren):
            inner = self._node(node.this, sql)
            return Compiled(f"({inner.source})", inner.nullable)
        if isinstance(node, exp.Column):
            return self._column(node.name, sql)
        if isinstance(node, exp.Literal):
            return Compiled(_literal(node), False)
        if isinstance(node, exp.Boolean):
            return Compiled(repr(bool(node.this)), False)
        if isinstance(node, exp.Null):
            return Compiled("None", True)
        if isinstance(node, exp.Pi):
            return Compiled("math.pi", False)
        if isinstance(node, exp.Div):
            return self._divide(node, sql)
        if isinstance(node, exp.Mod):
            return self._call("_mod", [node.this, node.expression], sql)
        if type(node) in _BINARY:
            return self._binary(node, sql, condition)
        if type(node) in _UNARY_FUNCTIONS:
            return self._call(_UNARY_FUNCTIONS[type(node)], [node.this], sql)
        if isinstance(node, exp.Neg):
            return self._call("_neg", [node.this], sql)
        if isinstance(node, exp.Round):
            args = [node.this] + ([node.args["decimals"]] if node.args.get("decimals") else [])
            return self._call("_round", args, sql)
        if isinstance(node, exp.Cast):
            return self._cast(node, sql)
        if isinstance(node, exp.Case):
            return self._case(node, sql)
        if isinstance(node, exp.Coalesce):
            return self._coalesce(node, sql)
        if isinstance(node, exp.Greatest):
            return self._greatest(node, sql)
        if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
            return Compiled(f"({self._node(node.this, sql).source} is None)", False)
        if isinstance(node, exp.Not):
            inner = self._node(node.this, sql)
            if inner.nullable:
                return Compiled(f"_not({inner.source})", True)
            return Compiled(f"(not {inner.source})", False)
        if isinstance(node, (exp.And, exp.Or)):
            # Python's and/or give the SQL answer wherever the result is used as a
            # condition (NULL and FALSE both skip a CASE branch or a FILTER row).
            word = "and" if isinstance(node, exp.And) else "or"
            left = self._node(node.this, sql, condition)
            right = self._node(node.expression, sql, condition)
            nullable = left.nullable or right.nullable
            return Compiled(f"({left.source} {word} {right.source})", nullable)
        raise UnsupportedExpression(
            f"{sql!r}: the online engine cannot evaluate {node.key!r} ({node.sql('duckdb')}); "
            "extend pipelines/serving/online/compiler.py or use the supported subset "
            "(CASE, coalesce, ln, sqrt, greatest, sin/cos/pi, floor, round, arithmetic)"
        )

    def _column(self, name: str, sql: str) -> Compiled:
        if name not in self.variables:
            raise UnsupportedExpression(
                f"{sql!r} reads column {name!r}, which is neither a base column, an aggregate "
                "nor an earlier feature"
            )
        return Compiled(self.variables[name], name in self.nullable)

    def _children(self, nodes: Sequence[exp.Expression], sql: str) -> list[Compiled]:
        return [self._node(n, sql) for n in nodes]

    def _call(self, function: str, nodes: Sequence[exp.Expression], sql: str) -> Compiled:
        args = self._children(nodes, sql)
        joined = ", ".join(a.source for a in args)
        if any(a.nullable for a in args):
            return Compiled(f"_n{function}({joined})", True)
        return Compiled(f"{function}({joined})", False)

    def _binary(self, node: exp.Expression, sql: str, condition: bool) -> Compiled:
        symbol, helper = _BINARY[type(node)]
        left, right = self._children([node.this, node.expression], sql)
        if left.nullable or right.nullable:
            if condition and isinstance(node, exp.EQ) and "None" not in (left.source,
                                                                         right.source):
                # As a condition, ``None == x`` (False) and SQL's NULL both mean "not true".
                return Compiled(f"({left.source} == {right.source})", False)
            return Compiled(f"_n{helper}({left.source}, {right.source})", True)
        return Compiled(f"({left.source} {symbol} {right.source})", False)

    def _divide(self, node: exp.Div, sql: str) -> Compiled:
        divisor = node.expression
        while isinstance(divisor, exp.Paren):
            divisor = divisor.this
        if isinstance(divisor, exp.Literal) and not divisor.is_string and float(divisor.this):
            # A non-zero constant divisor: plain float division is exactly DuckDB's.
            left = self._node(node.this, sql)
            if left.nullable:
                return Compiled(f"_n_div({left.source}, {_literal(divisor)})", True)
            return Compiled(f"({left.source} / {_literal(divisor)})", False)
        return self._call("_div", [node.this, node.expression], sql)

    def _cast(self, node: exp.Cast, sql: str) -> Compiled:
        target = node.to.this.name if hasattr(node.to.this, "name") else str(node.to.this)
        function = _CASTS.get(target.upper())
        if function is None:
            raise UnsupportedExpression(f"{sql!r}: CAST to {target} is not supported online")
        return self._call(function, [node.this], sql)

    def _case(self, node: exp.Case, sql: str) -> Compiled:
        if node.this is not None:
            raise UnsupportedExpression(f"{sql!r}: use CASE WHEN cond, not CASE x WHEN value")
        default = node.args.get("default")
        result = self._node(default, sql) if default is not None else Compiled("None", True)
        nullable = result.nullable
        for branch in reversed(node.args["ifs"]):
            test = self._node(branch.this, sql, condition=True)
            value = self._node(branch.args["true"], sql)
            nullable = nullable or value.nullable
            result = Compiled(f"({value.source} if {test.source} else {result.source})", nullable)
        return result

    def _coalesce(self, node: exp.Coalesce, sql: str) -> Compiled:
        args = self._children([node.this, *node.expressions], sql)
        joined = ", ".join(a.source for a in args)
        return Compiled(f"_coalesce({joined})", all(a.nullable for a in args))

    def _greatest(self, node: exp.Greatest, sql: str) -> Compiled:
        args = self._children([node.this, *node.expressions], sql)
        joined = ", ".join(a.source for a in args)
        if any(a.nullable for a in args):
            return Compiled(f"_greatest({joined})", all(a.nullable for a in args))
        return Compiled(f"max({joined})", False)


def _literal(node: exp.Literal) -> str:
    if node.is_string:
        return repr(node.this)
    text = node.this
    return repr(int(text)) if text.lstrip("-").isdigit() else repr(float(text))


def build_function(name: str, parameters: Sequence[str], body: Sequence[str]) -> Callable:
    """``def name(parameters): body`` compiled with the SQL runtime helpers in scope."""
    source = f"def {name}({', '.join(parameters)}):\n" + "".join(f"    {line}\n" for line in body)
    namespace: dict[str, Any] = dict(RUNTIME)
    exec(compile(source, f"<online:{name}>", "exec"), namespace)  # noqa: S102 - our own codegen
    function = namespace[name]
    function.__source__ = source
    return function
