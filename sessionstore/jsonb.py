"""The json/jsonb codec every pooled connection uses.

Writes take text that :func:`sessionstore.validation.metadata_json` has already checked
and serialised. Reads must never fail on what another client stored: PostgreSQL accepts
jsonb nested a few thousand levels deep (Python's ``json`` stops near 1,000 with
``RecursionError``) and integers of any length (Python refuses to parse more than
``sys.get_int_max_str_digits()`` digits). Such values are decoded by a slower iterative
parser instead, exactly (a number too long for a float becomes a ``Decimal``).
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

__all__ = ["decode", "encode"]


def encode(value: Any) -> str:
    """jsonb text for ``value``; text passes through (it was serialised when checked)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def decode(text: str) -> Any:
    """The Python value of jsonb ``text``, however deep or long its numbers."""
    if text == "{}":  # most metadata is the column default: skip the parser
        return {}
    if len(text) > _FLOAT_DIGITS and _LONG_DIGITS.search(text):
        # json would read a decimal of more than ~309 digits as float('inf'), silently
        return _decode_iteratively(text)
    try:
        return json.loads(text)
    except (RecursionError, ValueError):
        return _decode_iteratively(text)


# A float holds no number of more than 309 integer digits; such a number (never written by
# sessionstore, which refuses floats of 1e16 or more) is read as an exact Decimal.
_FLOAT_DIGITS = 300
_LONG_DIGITS = re.compile(rf"\d{{{_FLOAT_DIGITS}}}")


# jsonb's text output: punctuation, strings, and bare scalars (numbers, true, false, null).
_TOKENS = re.compile(r'\s*(?:([{}\[\]:,])|("(?:[^"\\]|\\.)*")|([^\s{}\[\]:,"]+))')


def _long_int(digits: str) -> int:
    # Decimal parses any length, and its conversion to int does not go through str.
    return int(Decimal(digits))


def _exact_float(digits: str) -> float | Decimal:
    value = float(digits)
    return value if math.isfinite(value) else Decimal(digits)


def _scalar(token: str) -> Any:
    return json.loads(token, parse_int=_long_int, parse_float=_exact_float)


def _decode_iteratively(text: str) -> Any:
    """Decode with an explicit stack, so depth costs memory, not recursion."""
    containers: list[dict[str, Any] | list[Any]] = []
    keys: list[str | None] = []  # per open object: the key awaiting its value
    root: list[Any] = []

    def attach(value: Any) -> None:
        if not containers:
            root.append(value)
            return
        top = containers[-1]
        if isinstance(top, list):
            top.append(value)
        else:
            key = keys[-1]
            assert key is not None
            top[key] = value
            keys[-1] = None

    for punct, string, bare in _TOKENS.findall(text):
        if punct in ("{", "["):
            container: dict[str, Any] | list[Any] = {} if punct == "{" else []
            attach(container)
            containers.append(container)
            keys.append(None)
        elif punct in ("}", "]"):
            containers.pop()
            keys.pop()
        elif punct:  # ":" and "," carry nothing the positions do not already say
            continue
        elif string and containers and isinstance(containers[-1], dict) and keys[-1] is None:
            keys[-1] = json.loads(string)
        else:
            attach(_scalar(string or bare))
    return root[0]
