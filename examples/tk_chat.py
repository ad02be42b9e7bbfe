"""A Tk chat window: subscribe to a channel, send lines, show what arrives.

Start the bundled server in one terminal::

    tether-sync serve                      # listens on ws://127.0.0.1:8765/

then, in another::

    python examples/tk_chat.py ws://127.0.0.1:8765/ --channel chat --name ada

Type a line and press Enter (or click Send). The bundled server echoes each
client's own messages back, so they show up in the list; a full Tether server
also shows what other clients publish on the channel. The status line follows
the connection state (close the server and watch it reconnect).

Every callback runs on the Tk thread, through
``tether_sync.dispatchers.TkDispatcher``: the subscription callback and the
event handlers may touch widgets directly.

``--self-test N`` is for automation: once connected, it sends N lines through
the same path as the Send button, prints ``shown N`` when all N echoes are in
the list and ``callbacks on the Tk thread: K of M``, then waits for a line on
standard input (or its end) before it closes the window.
"""

from __future__ import annotations

import argparse
import sys
import threading
import tkinter as tk
from typing import Any, List, Optional

from tether_sync import State, StateChangeEvent, TetherClient
from tether_sync.dispatchers import TkDispatcher


class ChatWindow:
    """The window, and the client whose callbacks it receives on the Tk thread."""

    def __init__(self, root: tk.Tk, url: str, channel: str, name: str) -> None:
        self.root = root
        self.channel = channel
        self.name = name
        self.tk_thread = threading.current_thread()
        self.callbacks = 0
        self.on_tk_thread = 0

        root.title(f"tether_sync chat: {channel}")
        self.status = tk.StringVar(value="idle")
        tk.Label(root, textvariable=self.status, anchor="w").pack(fill="x", padx=6, pady=(6, 0))
        self.messages = tk.Listbox(root, width=48, height=14)
        self.messages.pack(fill="both", expand=True, padx=6, pady=6)
        row = tk.Frame(root)
        row.pack(fill="x", padx=6, pady=(0, 6))
        self.entry = tk.Entry(row)
        self.entry.pack(side="left", fill="x", expand=True)
        self.entry.bind("<Return>", lambda _event: self.send_entry())
        self.send_button = tk.Button(row, text="Send", command=self.send_entry)
        self.send_button.pack(side="right", padx=(6, 0))
        self.entry.focus_set()
        # Closing the window ends mainloop(); main() then closes the client first.
        root.protocol("WM_DELETE_WINDOW", root.quit)

        # Created on the Tk thread: from now on every callback of the client runs here.
        self.dispatcher = TkDispatcher(root)
        self.client = TetherClient(url, dispatcher=self.dispatcher)
        self.client.on("state_change", self.on_state)
        self.client.subscribe(channel, self.on_message)
        self.client.connect()

    def _count(self) -> None:
        self.callbacks += 1
        if threading.current_thread() is self.tk_thread:
            self.on_tk_thread += 1

    def on_state(self, event: StateChangeEvent) -> None:
        self._count()
        self.status.set(f"{State(event.current).value}  ({self.client.url})")

    def on_message(self, payload: Any) -> None:
        self._count()
        if isinstance(payload, dict):
            line = f"{payload.get('from', '?')}: {payload.get('text', '')}"
        else:
            line = str(payload)
        self.messages.insert("end", line)
        self.messages.see("end")

    def send_entry(self) -> None:
        text = self.entry.get().strip()
        if text:
            # Never blocks on the link: while offline it queues, and goes out on reconnect.
            self.client.send({"from": self.name, "text": text}, channel=self.channel)
            self.entry.delete(0, "end")

    def shown(self) -> List[str]:
        return [str(item) for item in self.messages.get(0, "end")]

    def close(self) -> bool:
        """Close the client, run its last callbacks while the window exists, destroy it."""
        clean = self.client.close(timeout=5)
        self.dispatcher.run_pending()
        self.root.destroy()
        return clean


def _self_test(window: ChatWindow, count: int) -> None:
    """Type ``count`` lines as a user would, then report once all echoes are shown."""
    root = window.root
    state = {"sent": False, "reported": False}

    def step() -> None:
        if not state["sent"] and window.client.state == "open":
            for n in range(count):
                window.entry.insert(0, f"line {n}")
                window.send_button.invoke()
            state["sent"] = True
        if state["sent"] and len(window.shown()) >= count and not state["reported"]:
            state["reported"] = True
            root.update_idletasks()
            print(f"shown {len(window.shown())}", flush=True)
            print(
                f"callbacks on the Tk thread: {window.on_tk_thread} of {window.callbacks}",
                flush=True,
            )
            # The test takes its screenshot now, then writes a line (or closes stdin).
            threading.Thread(target=wait_for_stdin, daemon=True).start()
            return
        root.after(20, step)

    def wait_for_stdin() -> None:
        sys.stdin.readline()
        # Not on the Tk thread: hand the shutdown to it, like any callback.
        window.dispatcher(root.quit)

    root.after(20, step)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws:// URL of a Tether server")
    parser.add_argument("--channel", default="chat", help="channel (default chat)")
    parser.add_argument("--name", default="me", help="your name in the chat (default me)")
    parser.add_argument("--self-test", type=int, default=0, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    root = tk.Tk()
    window = ChatWindow(root, args.url, args.channel, args.name)
    if args.self_test:
        _self_test(window, args.self_test)
    try:
        root.mainloop()
    finally:
        clean = window.close()
    print(f"closed clean={clean}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
