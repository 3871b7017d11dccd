"""What the ``sessionstore`` command takes as a duration (``prune --older-than 90d``)."""

from __future__ import annotations

import re
from datetime import timedelta

import typer

from .. import validation as v
from ..errors import InvalidInputError

__all__ = ["parse_duration"]

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"([0-9]+)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """An integer followed by one unit — ``s``, ``m`` (minutes), ``h``, ``d`` or ``w`` —
    as ``90d``; positive, at most 365,000 days. Anything else is a usage error that
    says what is accepted."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise typer.BadParameter(
            "expected an integer and one unit, s, m (minutes), h, d or w, as 90d or 12h"
        )
    try:
        value = timedelta(**{_UNITS[found[2]]: int(found[1])})
        return v.duration(value, "older_than")
    except OverflowError:
        raise typer.BadParameter("must be at most 365000 days") from None
    except InvalidInputError as exc:
        raise typer.BadParameter(str(exc).removeprefix("older_than: ")) from None
