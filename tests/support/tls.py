"""A test certificate authority for wss:// servers on localhost (``trustme``)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Tuple

import pytest


def localhost_tls(folder: Path) -> Tuple[ssl.SSLContext, Path, Any]:
    """A server context with a certificate for ``localhost`` from a fresh test CA.

    Skips the test if ``trustme`` is not installed.

    Returns:
        The server's context, the CA's certificate file in ``folder`` (what a
        client passes as ``sslopt={"ca_certs": ...}``), and the ``trustme.CA``
        (to issue more certificates, e.g. a client's).
    """
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, ca_file, ca
