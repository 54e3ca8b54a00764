"""One reading of option values for the API, the CLI and the widgets.

The CLI hands over text ("3", "true"), the API Python values (3, 3.0, True, numpy scalars): both
go through these, so that what one refuses the other refuses too, with the same words. Each
raises ``error(message)`` (an :class:`~napari_edof.core.errors.EdofError` subclass) naming the
option, never a bare ValueError or TypeError.
"""
from __future__ import annotations

import math
import numbers

from .errors import EdofError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def to_int(value, name: str, error=EdofError) -> int:
    """A whole number: an int, an integral float (3.0) or its text ("3", "3.0"); not True/False,
    not 3.7, NaN or infinity."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                raise error(f"{name}={value!r} is not a whole number") from None
            return _integral(f, value, name, error)
    if isinstance(value, (bool,)) or type(value).__name__ == "bool_":
        raise error(f"{name}={value!r} is not a whole number (a bool was given)")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return _integral(float(value), value, name, error)
    raise error(f"{name}={value!r} is not a whole number")


def _integral(f: float, value, name: str, error) -> int:
    if not math.isfinite(f) or f != int(f):
        raise error(f"{name}={value!r} is not a whole number")
    return int(f)


def to_float(value, name: str, error=EdofError) -> float:
    """A finite number: an int, a float or its text; not True/False, NaN or infinity."""
    if isinstance(value, str):
        try:
            f = float(value.strip())
        except ValueError:
            raise error(f"{name}={value!r} is not a number") from None
    elif isinstance(value, bool) or type(value).__name__ == "bool_":
        raise error(f"{name}={value!r} is not a number (a bool was given)")
    elif isinstance(value, numbers.Real):
        f = float(value)
    else:
        raise error(f"{name}={value!r} is not a number")
    if not math.isfinite(f):
        raise error(f"{name}={value!r} is not a finite number")
    return f


def to_bool(value, name: str, error=EdofError) -> bool:
    """True/False, 1/0 or their text (true/false, yes/no, on/off, 1/0); anything else is refused
    (unknown text is not silently False)."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    if isinstance(value, str):
        t = value.strip().lower()
        if t in TRUE_WORDS:
            return True
        if t in FALSE_WORDS:
            return False
    raise error(f"{name}={value!r} is not true or false (use one of {', '.join(TRUE_WORDS + FALSE_WORDS)})")


def to_count(value, name: str, minimum: int = 1, error=EdofError) -> int:
    """A whole number of at least ``minimum`` (threads, workers, steps)."""
    v = to_int(value, name, error)
    if v < minimum:
        raise error(f"{name} must be {minimum} or more, not {v}")
    return v
