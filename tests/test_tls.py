"""The shared client's TLS context (`client/_tls.py`): what httpx would build — certificate
and hostname verified, the same CA bundle — with the bundle loaded by the first handshake
instead of by every command that makes a client (issue 18: start-up)."""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi
import pytest

from demiarch_flow.client._tls import LazyTrustContext, lazy_trust_context
from demiarch_flow.runtime import http_client


def cas(ctx: ssl.SSLContext) -> int:
    return ctx.cert_store_stats()["x509_ca"]


@pytest.fixture(autouse=True)
def _no_env_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "SSLKEYLOGFILE"):
        monkeypatch.delenv(name, raising=False)


def test_a_new_context_verifies_and_trusts_nothing_yet() -> None:
    """Made, it has loaded no bundle (the start-up it saves) and fails closed: certificate
    required, hostname checked."""
    ctx = lazy_trust_context()
    assert cas(ctx) == 0
    assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname


def test_the_first_wrap_loads_the_bundle_httpx_would() -> None:
    """A handshake's wrap loads certifi's bundle — the very CAs httpx's default context holds
    — once."""
    ctx = lazy_trust_context()
    ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="openrouter.ai")
    expected = cas(ssl.create_default_context(cafile=certifi.where()))
    assert cas(ctx) == expected > 0
    ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="openrouter.ai")
    assert cas(ctx) == expected


def test_ssl_cert_file_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``SSL_CERT_FILE`` names the bundle, as for httpx: here one CA of certifi's."""
    pem = Path(certifi.where()).read_text("ascii")
    end = "-----END CERTIFICATE-----"
    one = pem[pem.index("-----BEGIN CERTIFICATE-----") : pem.index(end) + len(end)] + "\n"
    (tmp_path / "one.pem").write_text(one, "ascii")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "one.pem"))
    ctx = lazy_trust_context()
    ctx.load_trust()
    assert cas(ctx) == 1


def test_a_socket_wrap_loads_it_too() -> None:
    """The blocking path (``wrap_socket``) loads the bundle before any handshake as well."""
    import socket

    ctx = lazy_trust_context()
    with socket.socket() as raw:
        ctx.wrap_socket(raw, server_hostname="openrouter.ai", do_handshake_on_connect=False).close()
    assert cas(ctx) > 0


def test_the_shared_client_uses_it() -> None:
    """``http_client`` gives httpx this context, so no command pays for the bundle before a
    TLS handshake."""
    client = http_client(4)
    pool = client._transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool._ssl_context, LazyTrustContext)
    assert cas(pool._ssl_context) == 0


@pytest.mark.parametrize("name", ["SSL_CERT_FILE", "SSL_CERT_DIR"])
def test_a_bundle_that_is_not_there_is_refused_at_once(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing bundle is an environment problem named now (exit 3), not a network error on
    every attempt at the first handshake."""
    from demiarch_flow.errors import EnvironmentProblem

    monkeypatch.setenv(name, str(tmp_path / "nowhere"))
    with pytest.raises(EnvironmentProblem, match=name) as caught:
        lazy_trust_context()
    assert caught.value.exit_code == 3
