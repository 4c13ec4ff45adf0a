"""The TLS context of the shared HTTP client, with its trust store loaded on first use.

httpx builds the default context when the client is made, and loading certifi's CA bundle
into it is ~30–50 ms of a command's start-up — more than a tenth of what a whole ``run``
against a local ``http://`` server may take (issue 18), and paid even when no TLS connection
is ever opened. This context is the one httpx would build (``PROTOCOL_TLS_CLIENT``: hostname
checked, certificate required; the bundle httpx would pick: ``SSL_CERT_FILE``,
``SSL_CERT_DIR``, else certifi's), except that the bundle is loaded by the first handshake
that needs it. It fails closed: until loaded it trusts nothing, and every way a connection
is wrapped loads it first.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any


class LazyTrustContext(ssl.SSLContext):
    """An ``ssl.SSLContext`` for clients whose CA bundle is loaded by its first wrap."""

    _loaded = False
    _lock = threading.Lock()

    def load_trust(self) -> None:
        """Load the bundle httpx would (once; later calls return at once)."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            if os.environ.get("SSL_CERT_FILE"):
                self.load_verify_locations(cafile=os.environ["SSL_CERT_FILE"])
            elif os.environ.get("SSL_CERT_DIR"):
                self.load_verify_locations(capath=os.environ["SSL_CERT_DIR"])
            else:
                import certifi

                self.load_verify_locations(cafile=certifi.where())
            self._loaded = True

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self.load_trust()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.load_trust()
        return super().wrap_socket(*args, **kwargs)


def lazy_trust_context() -> LazyTrustContext:
    """A new client context: certificate and hostname verified, trust loaded on first use
    (``SSLKEYLOGFILE`` honoured as ``ssl.create_default_context`` does).

    A bundle named by ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` that is not there is refused now
    (a stat, not a load), as httpx refused it when the client was made: found only at the
    first handshake, it would fail every attempt as a network error instead of once, plainly.

    Raises:
        EnvironmentProblem: the variable names no such file (folder).
    """
    for name, exists in (("SSL_CERT_FILE", os.path.isfile), ("SSL_CERT_DIR", os.path.isdir)):
        where = os.environ.get(name)
        if where:
            if not exists(where):
                from ..errors import EnvironmentProblem

                kind = "file" if name == "SSL_CERT_FILE" else "folder"
                raise EnvironmentProblem(
                    f"{name}={where!r}: no such {kind}; it names the CA bundle TLS connections"
                    f" trust (unset it to use certifi's)"
                )
            break  # SSL_CERT_FILE, when set, is the one used (as in load_trust)
    ctx = LazyTrustContext(ssl.PROTOCOL_TLS_CLIENT)
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog and hasattr(ctx, "keylog_filename"):
        ctx.keylog_filename = keylog
    return ctx
