"""How long a request may take: the middleware's ``timeout``, and what the proxy in front says.

Headers come from the network, through proxies that may repeat or merge them: nothing read
here raises, and nothing read here lengthens the budget that ``timeout`` gives.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable

from ._types import Scope

Timeout = float | Callable[[Scope], float | None] | None

# A budget in milliseconds, as Envoy sends it: digits, perhaps a fraction. Fifteen digits are
# thirty thousand years: longer is no budget, and float() of it would be slow for nothing.
_MILLISECONDS = re.compile(rb"[0-9]{1,15}(?:\.[0-9]{1,9})?")
# A time in seconds, milliseconds, microseconds or nanoseconds since the epoch, with an
# optional "t=" in front: Heroku sends "t=<ms>", nginx "t=${msec}" (seconds.milliseconds),
# Apache "t=<µs>".
_EPOCH = re.compile(rb"(?:t=)?([0-9]{1,19}(?:\.[0-9]{1,9})?)")
# No proxy sends a value this long: a longer one is ignored unread, at no cost.
_LONGEST = 256
# A start this far from now is a misreading (a unit the proxy does not use, a broken clock),
# not a queue: it is ignored.
_IMPLAUSIBLE = 86400.0


def check_seconds(name: str, value: object, *, zero: bool = False) -> float:
    """``value`` as seconds, or an error that names ``name`` and what was wrong.

    :raises TypeError: when ``value`` is not a number (a bool is not one).
    :raises ValueError: when it is not finite, or not above zero (at least zero with ``zero``).
    """
    kind = ">= 0" if zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds {kind}, not {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be a finite number of seconds {kind}, not {value!r}")
    return float(value)


def header_name(name: str, value: object) -> bytes | None:
    """A header option as ASGI spells header names (lower case), checked.

    :raises TypeError: when ``value`` is neither None nor a str.
    :raises ValueError: when it is not an HTTP header name.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be an HTTP header name (a str), not {value!r}")
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        raise ValueError(f"{name} must be an HTTP header name, not {value!r}")
    return value.lower().encode("ascii")


def timeout_for(timeout: Timeout, scope: Scope) -> float | None:
    """The seconds ``timeout`` gives this request, or None for no deadline."""
    if not callable(timeout):
        return timeout
    seconds = timeout(scope)
    if seconds is None:
        return None
    return check_seconds("the seconds that timeout(scope) returns", seconds)


def header_timeout(values: Iterable[bytes]) -> float | None:
    """The shortest valid budget, in seconds, among a header's millisecond values."""
    shortest = math.inf
    for value in values:
        if len(value) > _LONGEST:
            continue
        # Repeated headers may come as one, joined by commas.
        for part in value.split(b","):
            part = part.strip()
            if _MILLISECONDS.fullmatch(part):
                milliseconds = float(part)
                if 0 < milliseconds < shortest:
                    shortest = milliseconds
    return shortest / 1000 if shortest != math.inf else None


def queued_for(values: Iterable[bytes], clock_skew: float) -> float:
    """Seconds the request waited in front of the app, by the proxy's word, less clock skew.

    The earliest valid start counts: the first proxy's stamp. Clocks of different machines
    disagree; counting only what lies beyond ``clock_skew`` means that a clock behind ours by
    at most that much never turns a request away that was in time.
    """
    now = time.time()
    earliest = math.inf
    for value in values:
        if len(value) > _LONGEST:
            continue
        for part in value.split(b","):
            match = _EPOCH.fullmatch(part.strip())
            if match is None:
                continue
            started = _seconds_since_epoch(float(match[1]), now)
            if started is not None and started < earliest:
                earliest = started
    if earliest == math.inf:
        return 0.0
    return max(0.0, now - earliest - clock_skew)


def _seconds_since_epoch(number: float, now: float) -> float | None:
    # The unit is told by the magnitude: now is about 1.8e9 seconds since the epoch.
    for scale in (1.0, 1e3, 1e6, 1e9):
        seconds = number / scale
        if abs(now - seconds) <= _IMPLAUSIBLE:
            return seconds
    return None
