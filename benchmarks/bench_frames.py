"""Benchmark tether_sync.protocol.frames against websocket-client's frame code.

Run from the repository root::

    python benchmarks/bench_frames.py [--quick]

Prints microseconds per frame (best of several repeats) for:

* parsing a stream of server frames fed in 256 KiB chunks, against
  ``websocket._abnf.frame_buffer.recv_frame`` reading from an in-memory recv
  (``BytesIO.read``); for text also with websocket-client's
  ``continuous_frame`` step, which is where it validates UTF-8;
* encoding one masked client frame, against
  ``ABNF.create_frame(...).format()`` (which draws its key with os.urandom(4));
* the two masking strategies of ``frames`` (big-int XOR vs strided
  ``bytes.translate``), to justify the size threshold between them.
"""

from __future__ import annotations

import io
import os
import sys
import timeit
from pathlib import Path
from typing import Callable, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import websocket
from websocket._abnf import continuous_frame, frame_buffer

from tether_sync.protocol import frames

CHUNK = 256 * 1024


def best(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Return the best time of one call of ``fn``, in seconds."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def server_stream(payload: bytes, opcode: int, count: int) -> bytes:
    """Build ``count`` unmasked server frames with websocket-client (mask=0)."""
    one = websocket.ABNF(1, 0, 0, 0, opcode, 0, payload).format()
    return one * count


def bench_parse(size: int, opcode: int, count: int, repeat: int) -> None:
    """Parse ``count`` frames of ``size`` bytes: ours vs websocket-client."""
    payload = (b"x" * size) if opcode == frames.OP_TEXT else os.urandom(size)
    stream = server_stream(payload, opcode, count)
    chunks = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]

    def ours() -> None:
        parser = frames.FrameParser()
        got = 0
        for chunk in chunks:
            got += len(parser.feed(chunk))
        assert got == count

    def theirs(skip_utf8: bool) -> Callable[[], None]:
        def run() -> None:
            reader = frame_buffer(io.BytesIO(stream).read, skip_utf8)
            for _ in range(count):
                reader.recv_frame()

        return run

    t_ours = best(ours, 1, repeat) / count
    t_ws = best(theirs(False), 1, repeat) / count
    kind = "text" if opcode == frames.OP_TEXT else "binary"
    line = (
        f"parse  {kind:6} {size:>8} B x{count:<6} ours {t_ours * 1e6:9.3f} us/frame   "
        f"websocket-client {t_ws * 1e6:9.3f} us/frame   ({t_ws / t_ours:5.1f}x)"
    )
    print(line)
    if opcode == frames.OP_TEXT and size <= 4096:
        # frame_buffer alone does not validate text; WebSocket.recv_data_frame
        # also runs continuous_frame, whose UTF-8 check is pure Python here.
        def validated() -> None:
            reader = frame_buffer(io.BytesIO(stream).read, False)
            cont = continuous_frame(False, False)
            for _ in range(count):
                frame = reader.recv_frame()
                cont.validate(frame)
                cont.add(frame)
                cont.extract(frame)

        t_val = best(validated, 1, max(1, repeat // 2)) / count
        print(
            f"       {'':6} {'':>8}   {'':<6}      {'':9}            websocket-client "
            f"{t_val * 1e6:9.3f} us/frame   ({t_val / t_ours:5.1f}x) incl. continuous_frame "
            "UTF-8 check"
        )


def bench_encode(size: int, number: int, repeat: int) -> None:
    """Encode one masked text frame: ours vs ABNF.create_frame().format()."""
    payload = b"x" * size
    keys = frames.MaskKeys()
    encode = frames.encode_frame
    next_key = keys.next
    op = frames.OP_TEXT
    ws_op = websocket.ABNF.OPCODE_TEXT
    create = websocket.ABNF.create_frame

    t_ours = best(lambda: encode(op, payload, next_key()), number, repeat)
    t_ws = best(lambda: create(payload, ws_op).format(), number, repeat)
    print(
        f"encode text   {size:>8} B          ours {t_ours * 1e6:9.3f} us/frame   "
        f"websocket-client {t_ws * 1e6:9.3f} us/frame   ({t_ws / t_ours:5.1f}x)"
    )


def bench_encode_many(size: int, count: int, repeat: int) -> None:
    """encode_frames (coalesced) vs a loop of encode_frame + join."""
    items = [(frames.OP_TEXT, b"y" * size)] * count
    keys = frames.MaskKeys()

    def loop() -> bytes:
        return b"".join([frames.encode_frame(op, p, keys.next()) for op, p in items])

    t_many = best(lambda: frames.encode_frames(items, keys), 1, repeat) / count
    t_loop = best(loop, 1, repeat) / count
    print(
        f"encode_frames {size:>8} B x{count:<6} {t_many * 1e6:9.3f} us/frame   "
        f"loop of encode_frame {t_loop * 1e6:9.3f} us/frame"
    )


def bench_mask(sizes: List[int], repeat: int) -> None:
    """Compare the two masking strategies at several sizes."""
    key = os.urandom(4)
    for size in sizes:
        data = os.urandom(size)
        number = max(3, 2_000_000 // (size + 200))

        def by_int(data: bytes = data) -> bytes:
            n = len(data)
            rep = (key * ((n >> 2) + 1))[:n]
            return (int.from_bytes(data, "little") ^ int.from_bytes(rep, "little")).to_bytes(
                n, "little"
            )

        def by_translate(data: bytes = data) -> bytes:
            out = bytearray(len(data))
            frames._strided_mask(out, 0, data, key)
            return bytes(out)

        assert by_int() == by_translate() == frames.mask_payload(data, key)
        t_int = best(by_int, number, repeat)
        t_tr = best(by_translate, number, repeat)
        print(
            f"mask          {size:>8} B          int-xor {t_int * 1e6:10.2f} us   "
            f"strided-translate {t_tr * 1e6:10.2f} us   "
            f"(used: {'int' if size <= frames._INT_MASK_MAX else 'translate'})"
        )


def main() -> None:
    """Run every benchmark and print the results."""
    quick = "--quick" in sys.argv
    repeat = 3 if quick else 7
    scale = 10 if quick else 1
    print(f"Python {sys.version.split()[0]}, websocket-client {websocket.__version__}")
    # Put the allocator in the state of a long-running process: glibc serves
    # blocks >= 128 KiB with mmap (page faults on every 1 MiB message) until a
    # large block is freed, which raises its threshold. Without this, whichever
    # 1 MiB case runs first looks ~10x slower than steady state.
    warm = bytes(8 << 20)
    del warm
    print("-- parsing (server -> client, fed in 256 KiB chunks) --")
    bench_parse(64, frames.OP_TEXT, 20000 // scale, repeat)
    bench_parse(64, frames.OP_BINARY, 20000 // scale, repeat)
    bench_parse(1024, frames.OP_TEXT, 5000 // scale, repeat)
    bench_parse(4096, frames.OP_BINARY, 2000 // scale, repeat)
    bench_parse(65536, frames.OP_BINARY, 100 // scale, repeat)
    bench_parse(1 << 20, frames.OP_TEXT, max(2, 10 // scale), repeat)
    bench_parse(1 << 20, frames.OP_BINARY, max(2, 10 // scale), repeat)
    print("-- encoding (client -> server, masked) --")
    for size in (0, 64, 125, 1024, 4096, 65536):
        bench_encode(size, 20000 // scale if size <= 4096 else 200 // scale, repeat)
    bench_encode(1 << 20, max(2, 10 // scale), repeat)
    bench_encode_many(64, 10000 // scale, repeat)
    print("-- masking strategies --")
    bench_mask([64, 512, 1024, 2048, 4096, 16384, 65536, 1 << 20], repeat)


if __name__ == "__main__":
    main()
