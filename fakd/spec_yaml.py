"""Reading a spec's YAML defensively: a hostile or broken file is one line, never a crash, a hang or a memory blow-up.

Checked before anything is built from the text: the size (`MAX_BYTES`), the encoding (UTF-8, a BOM allowed), the
nesting depth (`MAX_DEPTH`, counted on the parser's events, so no recursion can overflow), alias expansion (bounded
by `MAX_EXPANSION`: a few nested aliases can expand a small file into gigabytes), and duplicate keys at any level
(refused, naming both lines: YAML would keep the later one silently, and a second `train:` section would replace the
first whole).
"""

from __future__ import annotations

from typing import Any

import yaml

from fakd.errors import UserError

MAX_BYTES = 1_000_000
MAX_DEPTH = 32
MAX_EXPANSION = 10
"""Aliases may repeat what a spec writes, up to this many times over (a few nested ones can repeat it billions of
times)."""
MAX_ECHO = 200
"""A value a message repeats is cut to this many characters."""


def cut(text: str, limit: int = MAX_ECHO) -> str:
    """`text`, cut to `limit` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short(value: Any, limit: int = MAX_ECHO) -> str:
    """`repr(value)`, cut to `limit` characters."""
    return cut(repr(value), limit)


class _NoDuplicates(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key that a mapping already has."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base class says so
                break
            if first != key_node.start_mark.line + 1:
                raise UserError(f"duplicate key {short(key)} at lines {first} and {key_node.start_mark.line + 1}; "
                                "each key may appear once")
        return super().construct_mapping(node, deep=deep)


def decode(data: bytes) -> str:
    """UTF-8 text (a leading BOM dropped), or a `UserError` saying where it is not."""
    if len(data) > MAX_BYTES:
        raise UserError(f"is {len(data):,} bytes; a spec is at most {MAX_BYTES:,} bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UserError(f"is not UTF-8 text (byte {data[exc.start]:#04x} at line {line}); save it as UTF-8") from None


def load(text: str) -> Any:
    """The YAML value of `text`, checked as the module says; a `UserError` for every problem."""
    try:
        _check_events(text)
        return yaml.load(text, Loader=_NoDuplicates)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"not valid YAML{where}: {cut(str(getattr(exc, 'problem', None) or exc))}") from None


def _check_events(text: str) -> None:
    """Depth and alias expansion, from the parser's events (nothing is built, nothing recurses): each open
    collection counts the scalars it will hold once its aliases are expanded."""
    sizes: dict[str, int] = {}  # anchor → scalars its node holds, expanded
    frames: list[list[Any]] = []  # open collections: [anchor, expanded scalars so far]
    written = expanded = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            frames.append([event.anchor, 0])
            if len(frames) > MAX_DEPTH:
                raise UserError(f"nests deeper than {MAX_DEPTH} levels at line {event.start_mark.line + 1}")
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, count = frames.pop()
            if anchor is not None:
                sizes[anchor] = count
            added = count
        elif isinstance(event, yaml.ScalarEvent):
            written += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
            added = 1
        elif isinstance(event, yaml.AliasEvent):
            added = sizes.get(event.anchor, 1)
        else:
            continue
        if frames:
            frames[-1][1] += added
        else:
            expanded += added
        if frames and frames[0][1] > MAX_EXPANSION * max(written, 100):
            raise UserError(f"its aliases expand it to more than {MAX_EXPANSION} times the values it writes "
                            f"(at line {event.start_mark.line + 1}); write the values out")


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(tree: Any) -> str:
    """YAML of `tree` that `load` reads back: a value the tree holds twice is written out twice, never as an alias."""
    return yaml.dump(tree, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)
