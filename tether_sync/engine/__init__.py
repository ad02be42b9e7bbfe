"""The I/O tier: the I/O thread, which alone owns the socket, and the helper threads it starts.

Only :mod:`tether_sync.client` imports this package (DESIGN §4).
"""
