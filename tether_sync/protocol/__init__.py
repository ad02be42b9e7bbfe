"""The sans-I/O tier: one connection's protocol as pure objects (DESIGN §4).

Nothing here imports ``threading``, ``socket``, ``selectors`` or ``time``, nor
anything from :mod:`tether_sync.engine`: bytes and ``now`` go in, bytes, events and
deadlines come out, so every module is tested with scripted frames and a fake clock.
"""
