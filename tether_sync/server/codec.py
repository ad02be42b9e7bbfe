"""JSON in and out, as the reference server reads and writes it (``JSON.parse``/``JSON.stringify``).

Numbers: Python's JSON keeps integers integral (``1`` echoes as ``1``), and a
number too big for a float (``1e400``) is read as infinity, which goes out as
``null``, as ``JSON.stringify`` writes it.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Optional, Sequence, Tuple, Union

__all__ = ["encode", "encode_parsed", "parse_json"]


def _reject_constant(name: str) -> Any:
    # JSON.parse refuses NaN and Infinity, so such text is "not JSON" for us too.
    raise ValueError(f"non-standard JSON constant {name}")


# One decoder for every message: json.loads with an option builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(data: Union[str, bytes]) -> Tuple[Any, bool]:
    """Parse a text or binary message as JSON.

    Returns:
        ``(value, True)`` on success, ``(None, False)`` when it is not JSON
        (including binary data that is not UTF-8).
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return _DECODER.decode(text), True
    except (ValueError, RecursionError):
        # ValueError: JSONDecodeError and UnicodeDecodeError. RecursionError:
        # JSON nested too deep for the parser, e.g. "[[[[...", which is valid.
        return None, False


def _finite(value: Any) -> Any:
    # JSON.stringify writes Infinity (what 1e400 parses to) as null.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


# One encoder of each kind for every message: json.dumps with an option builds a new one per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ASCII = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def encode(message: Any) -> str:
    """Encode like ``JSON.stringify``: compact, key order kept, non-ASCII left as is.

    A lone surrogate (possible when a client sent ``"\\ud800"``) cannot be
    UTF-8 encoded for a text frame, so then it falls back to ``\\u`` escapes,
    which is also what ``JSON.stringify`` does. An infinite number (a client's
    ``1e400``) becomes ``null``, as there.
    """
    try:
        text = _COMPACT.encode(message)
    except ValueError:  # an infinite float somewhere: rare, so checked only now
        message = _finite(message)
        text = _COMPACT.encode(message)
    return _sendable(text, message)


def _sendable(text: str, message: Any) -> str:
    # ``text`` if a text frame can carry it; ``\\u`` escapes for a lone surrogate.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return _ASCII.encode(message)
    return text


def _parsed_encoder() -> Optional[Callable[[Any, int], Sequence[str]]]:
    # json's C encoder, made once: JSONEncoder.encode makes a new one (with a new
    # circular-reference check) at every call, which costs as much as the encoding
    # of a small envelope. None where json has no C speedups.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        # (markers, default, encoder, indent, key_sep, item_sep, sort_keys, skipkeys, allow_nan)
        made: Callable[[Any, int], Sequence[str]] = make(
            None, _COMPACT.default, json.encoder.encode_basestring, None, ":", ",", *(False,) * 3
        )
        sample = {"a": [1, 2.5, None, True, "\u00e9\n"], "b": {}}
        if "".join(made(sample, 0)) != _COMPACT.encode(sample):
            return None
    except Exception:  # another Python's C encoder: keep to JSONEncoder
        return None
    return made


_PARSED = _parsed_encoder()


def encode_parsed(message: Any) -> str:
    """:func:`encode` for a value built from parsed JSON (it cannot refer to itself).

    The same text, faster: no circular-reference check, which only such a
    reference (impossible in parsed JSON) would need.
    """
    if _PARSED is None:
        return encode(message)
    try:
        text = "".join(_PARSED(message, 0))
    except ValueError:  # an infinite float somewhere: let encode() handle it
        return encode(message)
    return _sendable(text, message)
