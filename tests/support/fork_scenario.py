"""A parent with a connected client forks; the child uses the client on its own.

Run as a script (the test runs it in a subprocess): ``python fork_scenario.py URL``.
Prints one JSON line with what the child saw, what the parent saw after the
fork, and how long the child took to exit once its work was done.
"""

from __future__ import annotations

import json
import os
import sys
import time

from tether_sync import TetherClient


def main(url: str) -> int:
    client = TetherClient(url)
    client.connect(wait=True, timeout=10)
    parent_sub = client.subscribe("parent")
    client.send("before-fork", channel="parent")
    assert parent_sub.get(timeout=5) == "before-fork"
    parent_session = client.stats().session_id
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a normal interpreter exit at the end (atexit runs)
        os.close(read_end)
        report = {"state_after_fork": client.state.value}
        try:
            sub = client.subscribe("child")  # first use: connects on its own
            client.send("from-child", channel="child")
            report["got"] = sub.get(timeout=10)
            stats = client.stats()
            report["session"] = stats.session_id
            report["state"] = stats.state
        except BaseException as exc:  # report, do not hang the parent
            report["error"] = repr(exc)
        os.write(write_end, json.dumps(report).encode())
        os.close(write_end)
        sys.exit(0)
    os.close(write_end)
    client.send("after-fork", channel="parent")  # the parent is unaffected
    parent_after = parent_sub.get(timeout=10)
    data = b""
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        data += chunk
    done = time.monotonic()  # the child closed the pipe: its work is over
    _, status = os.waitpid(pid, 0)
    exit_delay = time.monotonic() - done
    result = {
        "child": json.loads(data or b"{}"),
        "parent_after": parent_after,
        "parent_state": client.stats().state,
        "parent_session": parent_session,
        "exit_delay": exit_delay,
        "exit_status": status,
    }
    print(json.dumps(result), flush=True)
    return 0 if client.close(timeout=5) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
