"""Reading literal values out of an mmsegmentation config text without running it.

mmseg 0.x checkpoints carry their config as Python source (`meta['config']`), mmengine-based 1.x ones as
`meta['cfg']`. The text is parsed with `ast` (never exec/eval): each top-level `name = value` whose value is
built from literals, `dict(...)` calls with keyword arguments and earlier names is kept; anything else is
dropped. What cannot be read this way is simply unknown, and the caller falls back to mmseg's defaults.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

_MAX_CHARS = 1_000_000


class _Unknown:
    """A value the literal reader cannot know."""


UNKNOWN = _Unknown()


def parse_config_text(text: str) -> dict[str, Any]:
    """The top-level assignments of `text` that are pure literals (nested values may be `UNKNOWN`)."""
    if not isinstance(text, str) or len(text) > _MAX_CHARS:
        return {}
    try:
        module = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return {}
    scope: dict[str, Any] = {}
    for statement in module.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name):
                try:
                    scope[target.id] = _literal(statement.value, scope)
                except RecursionError:
                    scope[target.id] = UNKNOWN
    return scope


def lookup(config: Mapping[str, Any], *path: str) -> Any:
    """`config[path[0]][path[1]]...`, or UNKNOWN when any step is missing or unknown."""
    value: Any = config
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return UNKNOWN
        value = value[part]
    return value


def _literal(node: ast.AST, scope: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(item, scope) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        keys = [_literal(key, scope) if key is not None else UNKNOWN for key in node.keys]
        if any(not isinstance(key, (str, int, float, bool)) for key in keys):
            return UNKNOWN
        return {key: _literal(value, scope) for key, value in zip(keys, node.values, strict=True)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        if any(keyword.arg is None for keyword in node.keywords):
            return UNKNOWN
        return {keyword.arg: _literal(keyword.value, scope) for keyword in node.keywords}
    if isinstance(node, ast.Name):
        return scope.get(node.id, UNKNOWN)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal(node.operand, scope)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    return UNKNOWN
