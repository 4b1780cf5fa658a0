"""The expression language rendered for the engines that do not run Python: Spark SQL and Redis Lua.

Both renderings keep the language's semantics (:mod:`fstore.core.expr`): numeric fields and literals are
cast to doubles (Lua numbers are doubles already), arithmetic keeps its left-to-right order, a
comparison with a null operand is false (``coalesce(..., false)`` in SQL, a nil guard in Lua), a null
boolean field is false. Literals are rendered so that every engine reads the same double: SQL parses
Python's shortest round-trip ``repr`` with ``CAST('…' AS DOUBLE)``, Lua with its own (correctly rounded)
reader. The tests run each rendering on a real engine against :mod:`fstore.core.expr_eval`.
"""

from __future__ import annotations

from collections.abc import Mapping

from fstore.core.expr import Arith, Bool, Col, Column, Compare, Expr, In, IsNull, Kind, Neg, Not, Num, Str

_SQL_COMPARE = {"==": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _sql_literal(v: float | str) -> str:
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"CAST('{v!r}' AS DOUBLE)"


def to_sql(node: Expr, schema: Mapping[str, Column]) -> str:
    """A Spark SQL expression computing ``node`` (conditions never evaluate to NULL)."""
    if isinstance(node, Num | Str):
        return _sql_literal(node.value)
    if isinstance(node, Bool):
        return "true" if node.value else "false"
    if isinstance(node, Col):
        kind = schema[node.name].kind
        if kind is Kind.NUMBER:
            return f"CAST(`{node.name}` AS DOUBLE)"
        return f"coalesce(`{node.name}`, false)" if kind is Kind.BOOL else f"`{node.name}`"
    if isinstance(node, Neg):
        return f"(- {to_sql(node.operand, schema)})"
    if isinstance(node, Arith):
        return f"({to_sql(node.left, schema)} {node.op} {to_sql(node.right, schema)})"
    if isinstance(node, Compare):
        return (
            f"coalesce({_sql_value(node.left, schema)} {_SQL_COMPARE[node.op]} {_sql_value(node.right, schema)}, false)"
        )
    if isinstance(node, In):
        items = ", ".join(_sql_literal(v) for v in node.values)
        return f"coalesce({_sql_value(node.operand, schema)} {'NOT IN' if node.negated else 'IN'} ({items}), false)"
    if isinstance(node, IsNull):
        return f"({_sql_value(node.operand, schema)} IS {'NOT NULL' if node.negated else 'NULL'})"
    if isinstance(node, Not):
        return f"(NOT {to_sql(node.operand, schema)})"
    return "(" + f" {node.op.upper()} ".join(to_sql(x, schema) for x in node.operands) + ")"


def _sql_value(node: Expr, schema: Mapping[str, Column]) -> str:
    """A boolean field as a value (NULL kept, for ``is null`` and ``==``), anything else as :func:`to_sql`."""
    if isinstance(node, Col) and schema[node.name].kind is Kind.BOOL:
        return f"`{node.name}`"
    return to_sql(node, schema)


def measure_sql(value: Expr, where: Expr | None, schema: Mapping[str, Column]) -> str:
    """A Spark SQL expression that is the measured value, or NULL when the event does not count."""
    val = to_sql(value, schema)
    return val if where is None else f"CASE WHEN {to_sql(where, schema)} THEN {val} END"


#: Helpers every Lua rendering calls; define them once, before the rendered expressions. ``ev`` is the
#: event decoded by ``cjson`` (a JSON null is ``cjson.null``, a missing field ``nil``).
LUA_PRELUDE = r"""
local fs_null = cjson.null
local function fs_v(x) if x == fs_null then return nil end return x end
local function fs_num(x) x = fs_v(x) if x == nil then return nil end return tonumber(x) end
local function fs_neg(a) if a == nil then return nil end return -a end
local function fs_add(a, b) if a == nil or b == nil then return nil end return a + b end
local function fs_sub(a, b) if a == nil or b == nil then return nil end return a - b end
local function fs_mul(a, b) if a == nil or b == nil then return nil end return a * b end
local function fs_eq(a, b) return a ~= nil and b ~= nil and a == b end
local function fs_ne(a, b) return a ~= nil and b ~= nil and a ~= b end
local function fs_lt(a, b) return a ~= nil and b ~= nil and a < b end
local function fs_le(a, b) return a ~= nil and b ~= nil and a <= b end
local function fs_gt(a, b) return a ~= nil and b ~= nil and a > b end
local function fs_ge(a, b) return a ~= nil and b ~= nil and a >= b end
local function fs_in(a, set) return a ~= nil and set[a] == true end
local function fs_notin(a, set) return a ~= nil and set[a] ~= true end
"""

_LUA_ARITH = {"+": "fs_add", "-": "fs_sub", "*": "fs_mul"}
_LUA_COMPARE = {"==": "fs_eq", "!=": "fs_ne", "<": "fs_lt", "<=": "fs_le", ">": "fs_gt", ">=": "fs_ge"}


def _lua_literal(v: float | str) -> str:
    if isinstance(v, float):
        return f"({v!r})"
    out = []
    for byte in v.encode("utf-8"):
        ch = chr(byte)
        out.append(ch if 32 <= byte < 127 and ch not in '\\"' else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def to_lua(node: Expr, schema: Mapping[str, Column]) -> str:
    """A Lua expression computing ``node`` for the event table ``ev`` (needs :data:`LUA_PRELUDE`)."""
    if isinstance(node, Num | Str):
        return _lua_literal(node.value)
    if isinstance(node, Bool):
        return "true" if node.value else "false"
    if isinstance(node, Col):
        field = f'ev["{node.name}"]'
        return f"fs_num({field})" if schema[node.name].kind is Kind.NUMBER else f"fs_v({field})"
    if isinstance(node, Neg):
        return f"fs_neg({to_lua(node.operand, schema)})"
    if isinstance(node, Arith):
        return f"{_LUA_ARITH[node.op]}({to_lua(node.left, schema)}, {to_lua(node.right, schema)})"
    if isinstance(node, Compare):
        return f"{_LUA_COMPARE[node.op]}({to_lua(node.left, schema)}, {to_lua(node.right, schema)})"
    if isinstance(node, In):
        items = ", ".join(f"[{_lua_literal(v)}] = true" for v in node.values)
        return f"{'fs_notin' if node.negated else 'fs_in'}({to_lua(node.operand, schema)}, {{{items}}})"
    if isinstance(node, IsNull):
        return f"({to_lua(node.operand, schema)} {'~=' if node.negated else '=='} nil)"
    if isinstance(node, Not):
        return f"(not {_lua_truth(node.operand, schema)})"
    return "(" + f" {node.op} ".join(_lua_truth(x, schema) for x in node.operands) + ")"


def _lua_truth(node: Expr, schema: Mapping[str, Column]) -> str:
    return f"({to_lua(node, schema)} == true)"


def measure_lua(value: Expr, where: Expr | None, schema: Mapping[str, Column]) -> str:
    """A Lua expression that is the measured value, or nil when the event does not count."""
    val = to_lua(value, schema)
    return val if where is None else f"({_lua_truth(where, schema)} and {val} or nil)"
