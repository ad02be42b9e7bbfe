"""A Flask extension: one :class:`~tether_sync.TetherClient` per worker process.

::

    from flask import Flask
    from tether_sync.flask import TetherSync

    tether = TetherSync()

    def create_app():
        app = Flask(__name__)
        app.config["TETHER_URL"] = "wss://example.com/ws"
        app.config["TETHER_OPTIONS"] = {"queue": {"max_size": 10_000}}
        tether.init_app(app)
        return app

    @app.post("/order")
    def order():
        tether.send({"order": 42}, channel="orders")  # never blocks on the link
        return "", 204

Configuration (``app.config``):

``TETHER_URL`` (required)
    The server's ``ws://`` / ``wss://`` URL.
``TETHER_OPTIONS``
    A dict of keyword arguments for :class:`~tether_sync.TetherClient`
    (``auth``, ``reconnect``, ``queue``, ...). Checked by ``init_app``.
``TETHER_CLOSE_TIMEOUT``
    Seconds the worker may spend at exit draining and closing (default 5).

The client is created lazily, on first use of :attr:`TetherSync.client` (or
:meth:`TetherSync.send`), and connected at once without waiting: ``send()``
queues until the link is open. It belongs to the process that created it: the
extension keys it by ``os.getpid()``, so with a pre-forking server (gunicorn
``--preload``, uWSGI without ``lazy-apps``) each worker makes its own client
after the fork, even if the master used one before forking (the master's
client is left to the master). A worker closes its client when it exits
(``atexit``: gunicorn's workers exit through ``sys.exit``), within
``TETHER_CLOSE_TIMEOUT``; :meth:`TetherSync.close` does it earlier.

Flask is imported only by this module; ``import tether_sync`` never loads it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional

from tether_sync import Delivery, TetherClient

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger("tether_sync")

__all__ = ["TetherSync"]

EXTENSION_KEY = "tether_sync"
DEFAULT_CLOSE_TIMEOUT = 5.0


class _AppState:
    """What the extension keeps per Flask app: its settings and this process's client."""

    def __init__(self, url: str, options: Dict[str, Any], close_timeout: float) -> None:
        self.url = url
        self.options = options
        self.close_timeout = close_timeout
        # Guards _client and _pid. Re-created in a forked child (see _after_fork):
        # a lock that another thread of the parent held at fork time stays locked
        # in the child forever.
        self.lock = threading.Lock()
        self._client: Optional[TetherClient] = None
        self._pid = 0

    def get(self) -> TetherClient:
        pid = os.getpid()
        client = self._client
        if client is not None and self._pid == pid:
            return client
        with self.lock:
            if self._client is None or self._pid != pid:
                # A client inherited from the parent is not ours to use or close:
                # the parent owns its connection. Make this process its own.
                client = TetherClient(self.url, **self.options)
                client.connect()
                log.debug("process %d: created its tether_sync client for %s", pid, client)
                self._client, self._pid = client, pid
            return self._client

    def close(self, timeout: Optional[float] = None) -> bool:
        """Close this process's client, if it made one. True if it drained in time."""
        with self.lock:
            client, owned = self._client, self._pid == os.getpid()
            if owned:
                self._client = None
        if client is None or not owned:
            return True
        return client.close(self.close_timeout if timeout is None else timeout)

    def after_fork(self) -> None:
        self.lock = threading.Lock()


# Every app state of this process, for the exit hook and the fork hook. Weak: an
# app that is gone takes its state with it.
_states: weakref.WeakSet[_AppState] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for state in list(_states):
        try:
            state.close()
        except Exception:  # pragma: no cover - never break interpreter exit
            log.exception("closing the tether_sync client at exit failed")


def _after_fork_in_child() -> None:
    for state in list(_states):
        state.after_fork()


# Registered after tether_sync.client's own exit hook, so this one runs first
# (atexit is last in, first out): the client is closed here, within
# TETHER_CLOSE_TIMEOUT, and the client's generic exit flush finds nothing to do.
atexit.register(_close_all_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class TetherSync:
    """The extension. ``TetherSync(app)``, or ``TetherSync()`` then ``init_app(app)``.

    One instance may serve several apps (each with its own config and client):
    outside ``TetherSync(app)`` it uses the app of the current app context.
    """

    def __init__(self, app: Optional[Flask] = None) -> None:
        self._app: Optional[Flask] = None
        if app is not None:
            self.init_app(app)
            self._app = app

    def init_app(self, app: Flask) -> None:
        """Read and check the app's ``TETHER_*`` config; no client is made yet."""
        config: Mapping[str, Any] = app.config
        url = config.get("TETHER_URL")
        if not url or not isinstance(url, str):
            raise RuntimeError("TetherSync: set app.config['TETHER_URL'] to the server's URL")
        options = config.get("TETHER_OPTIONS") or {}
        if not isinstance(options, Mapping):
            raise TypeError("TetherSync: TETHER_OPTIONS must be a dict of TetherClient arguments")
        options = dict(options)
        if "url" in options:
            raise TypeError("TetherSync: give the URL as TETHER_URL, not in TETHER_OPTIONS")
        close_timeout = config.get("TETHER_CLOSE_TIMEOUT", DEFAULT_CLOSE_TIMEOUT)
        if not isinstance(close_timeout, (int, float)) or close_timeout < 0:
            raise ValueError("TetherSync: TETHER_CLOSE_TIMEOUT must be seconds >= 0")
        # Fail now, in the app factory, on bad options, rather than at the first
        # request: build (and drop) a client that is never connected.
        TetherClient(url, **options).close(0)
        state = _AppState(url, options, float(close_timeout))
        app.extensions[EXTENSION_KEY] = state
        _states.add(state)

    def _state(self) -> _AppState:
        app: Any = self._app
        if app is None:
            from flask import current_app

            app = current_app  # a proxy: RuntimeError outside an app context
        state = app.extensions.get(EXTENSION_KEY)
        if not isinstance(state, _AppState):
            raise RuntimeError("TetherSync: init_app() was not called for this app")
        return state

    @property
    def client(self) -> TetherClient:
        """This process's client for the app: created and connected on first use."""
        return self._state().get()

    def send(self, payload: Any, channel: str = "default") -> Delivery:
        """``client.send(payload, channel=channel)``: queues, never waits for the link."""
        return self.client.send(payload, channel=channel)

    def close(self, timeout: Optional[float] = None) -> bool:
        """Close this process's client now (the next use makes a new one).

        Args:
            timeout: Seconds; by default ``TETHER_CLOSE_TIMEOUT``.

        Returns:
            True if there was nothing to close or everything drained in time.
        """
        return self._state().close(timeout)
