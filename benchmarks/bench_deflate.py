"""Benchmark permessage-deflate (tether_sync.protocol.deflate) on the client's hot paths.

Run from the repository root::

    python benchmarks/bench_deflate.py [--quick] [--check]

The claim checked (issue 13): with compression negotiated, messages below the
threshold (1 KiB) cost within 5 % of compression off, on the encode path. Rows:

* ``writebuf loop``: the per-message loop of ``WriteBuffer.add_messages``
  (``encode_frame`` per message), off vs on with the threshold test hoisted
  out of the loop (``if len(data) >= threshold: data, rsv1 = codec.encode(data)``);
* ``encode_frames``: ``encode_frames(items, keys)`` vs ``encode_frames(items,
  keys, deflate=codec)``;
* ``naive``: calling ``codec.encode`` for every message (for information: why
  the threshold test belongs in the caller's loop);
* ``parse``: ``FrameParser()`` vs ``FrameParser(inflate=codec.decode)`` on
  uncompressed frames (for information: the code path is the same).

Then, for information, what compression costs and saves on a 1 MiB JSON
message. Timings are the best of several interleaved repeats (microseconds
per message). ``--check`` exits 1 if a below-threshold encode row is over 5 %.
"""

from __future__ import annotations

import json
import sys
import timeit
from pathlib import Path
from typing import Callable, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tether_sync.protocol import frames
from tether_sync.protocol.deflate import DeflateParams, PerMessageDeflate

LIMIT = 0.05


def interleaved_best(
    a: Callable[[], object], b: Callable[[], object], number: int, repeat: int
) -> Tuple[float, float]:
    """Best time of one call of ``a`` and of ``b``, measured alternately (less drift)."""
    ta: List[float] = []
    tb: List[float] = []
    for _ in range(repeat):
        ta.append(timeit.timeit(a, number=number))
        tb.append(timeit.timeit(b, number=number))
    return min(ta) / number, min(tb) / number


def small_messages(size: int, count: int) -> List[Tuple[int, bytes]]:
    body = json.dumps({"type": "publish", "channel": "prices", "payload": "x" * size})
    data = body.encode()[:size]
    return [(frames.OP_TEXT, data)] * count


def report(name: str, off: float, on: float, count: int, checked: bool) -> bool:
    overhead = on / off - 1
    ok = overhead <= LIMIT
    verdict = ("ok" if ok else "OVER 5 %") if checked else "info"
    print(
        f"{name:<34} off {off / count * 1e6:7.3f} us  on {on / count * 1e6:7.3f} us"
        f"  {overhead * 100:+6.1f} %  {verdict}"
    )
    return ok or not checked


def bench_small(size: int, number: int, repeat: int) -> bool:
    count = 100
    items = small_messages(size, count)
    codec = PerMessageDeflate(DeflateParams(client_max_window_bits=12))
    assert size < codec.threshold
    keys = frames.MaskKeys()
    encode = frames.encode_frame

    def loop_off() -> None:
        next_key = keys.next
        parts = []
        for op, data in items:
            parts.append(encode(op, data, next_key()))
        b"".join(parts)

    def loop_on() -> None:
        next_key = keys.next
        threshold = codec.threshold
        compress = codec.encode
        parts = []
        for op, data in items:
            if len(data) >= threshold:
                data, rsv1 = compress(data)
                parts.append(encode(op, data, next_key(), True, rsv1))
            else:
                parts.append(encode(op, data, next_key()))
        b"".join(parts)

    def loop_naive() -> None:
        next_key = keys.next
        compress = codec.encode
        parts = []
        for op, data in items:
            data, rsv1 = compress(data)
            parts.append(encode(op, data, next_key(), True, rsv1))
        b"".join(parts)

    ok = True
    off, on = interleaved_best(loop_off, loop_on, number, repeat)
    ok &= report(f"writebuf loop, {size} B", off, on, count, True)
    off, on = interleaved_best(
        lambda: frames.encode_frames(items, keys),
        lambda: frames.encode_frames(items, keys, deflate=codec),
        number,
        repeat,
    )
    ok &= report(f"encode_frames, {size} B", off, on, count, True)
    off, on = interleaved_best(loop_off, loop_naive, number, repeat)
    report(f"naive codec.encode per msg, {size} B", off, on, count, False)

    stream = b"".join(bytes((0x81, len(d))) + d for _, d in items if len(d) < 126)
    if not stream:
        stream = b"".join(bytes((0x81, 126)) + len(d).to_bytes(2, "big") + d for _, d in items)
    off, on = interleaved_best(
        lambda: frames.FrameParser().feed(stream),
        lambda: frames.FrameParser(inflate=codec.decode).feed(stream),
        number,
        repeat,
    )
    # Same code path either way (the fast path never looks at inflate): any
    # difference is noise, so this row is information, not part of --check.
    report(f"parse uncompressed, {size} B", off, on, count, False)
    assert codec._deflater is None, "nothing below the threshold was compressed"
    return ok


def bench_big(repeat: int) -> None:
    rows = [
        {"seq": i, "channel": "prices", "bid": i * 0.5, "ask": i * 0.5 + 0.25} for i in range(20000)
    ]
    payload = json.dumps(rows).encode()
    payload += b" " * max(0, 2**20 - len(payload))
    codec = PerMessageDeflate(DeflateParams(client_no_context_takeover=True))
    data, _ = codec.encode(payload)
    peer = PerMessageDeflate(DeflateParams(server_no_context_takeover=True))
    t_enc = min(timeit.repeat(lambda: codec.encode(payload), number=1, repeat=repeat))
    t_dec = min(timeit.repeat(lambda: peer.decode(data, 2**21), number=1, repeat=repeat))
    ratio = len(data) / len(payload)
    print(
        f"{len(payload) / 2**20:.2f} MiB JSON: {len(payload)} -> {len(data)} bytes ({ratio:.1%}),"
        f" compress {t_enc * 1e3:.1f} ms, inflate {t_dec * 1e3:.1f} ms"
    )


def main() -> int:
    quick = "--quick" in sys.argv
    number, repeat = (50, 5) if quick else (100, 60)
    ok = True
    for size in (20, 100, 1000):
        ok &= bench_small(size, number, repeat)
    bench_big(3 if quick else 10)
    if "--check" in sys.argv and not ok:
        print("below-threshold overhead over 5 %")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
