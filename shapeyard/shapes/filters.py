"""A small AIP-160 filter subset, as the SDK and cookbook send it for shape listings.

`term AND term ...`, each term `field OP value` with OP one of = != < <= > >=, and value a quoted string, a
number, true/false, or a bare word (an enum value such as LORA_TRAINER).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from shapeyard.wire.errors import InvalidArgument

_TERM = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(<=|>=|!=|=|<|>)\s*(.+?)\s*$")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

Record = Mapping[str, Any]


def _value(raw: str, kind: type, field: str) -> Any:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        raw = raw[1:-1]
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false"):
                raise ValueError
            return raw.lower() == "true"
        return kind(raw)
    except ValueError:
        raise InvalidArgument(f"filter field {field} needs a {kind.__name__} value, got {raw!r}") from None


def parse_filter(text: str, fields: Mapping[str, tuple[str, type]]) -> Callable[[Record], bool]:
    """fields: accepted filter name -> (record key, value type). Returns a predicate over records."""
    if not text or not text.strip():
        return lambda record: True
    tests: list[Callable[[Record], bool]] = []
    for term in re.split(r"\s+AND\s+", text.strip()):
        match = _TERM.match(term)
        if not match:
            raise InvalidArgument(f"filter term {term!r} is malformed; expected field=value, joined with AND")
        field, op, raw = match.groups()
        if field not in fields:
            raise InvalidArgument(
                f"filter field {field!r} is not supported; supported fields: {', '.join(sorted(fields))}"
            )
        key, kind = fields[field]
        wanted, compare = _value(raw, kind, field), _OPS[op]
        tests.append(lambda record, key=key, wanted=wanted, compare=compare: compare(record[key], wanted))
    return lambda record: all(test(record) for test in tests)
