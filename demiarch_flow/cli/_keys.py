"""``key set|status|delete`` and ``models sync``.

The key commands need only :mod:`demiarch_flow.keys` (and keyring); ``models sync`` imports the
HTTP client when it runs, so ``key status`` starts in a fraction of the time a run needs."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from typing import TYPE_CHECKING

from ..errors import SecretsError, UnusableKey
from ..keys import ENV_VAR, delete_key, key_status, resolve_key, store_key

if TYPE_CHECKING:
    from ..pricing import SyncReport


def cmd_key_set(_args: argparse.Namespace) -> int:
    """Read the key from a hidden prompt (or stdin when piped) — never from argv."""
    # Piped: bytes, decoded leniently; a bad byte becomes U+FFFD, which store_key refuses
    # (exit 3) without echoing any part of the key, as a decoding error would.
    value = (
        getpass.getpass("OpenRouter API key (input hidden): ")
        if sys.stdin.isatty()
        else sys.stdin.buffer.readline().decode("utf-8", "replace")
    )
    store_key(value)
    print(
        "stored the key in the OS keyring (service 'demiarch-flow', user 'openrouter')",
        file=sys.stderr,
    )
    return 0


def cmd_key_status(args: argparse.Namespace) -> int:
    """Where the key comes from and whether it can be used (exit 3 if not); never the key."""
    source: str | None
    problem: str | None = None
    try:
        source = resolve_key().source
    except UnusableKey as exc:
        source, problem = _source(), str(exc)
    except SecretsError as exc:  # no key, or a keyring that cannot be used
        source, problem = None, str(exc)
    if args.json:
        print(json.dumps({"usable": problem is None, "source": source, "problem": problem,
                          "message": key_status()}))  # fmt: skip
    else:
        print(key_status())
    return 3 if problem is not None else 0


def _source() -> str:
    """Where a key that is there but unusable comes from (``resolve_key``'s order)."""
    return "environment" if os.environ.get(ENV_VAR, "").strip() else "keyring"


def cmd_key_delete(_args: argparse.Namespace) -> int:
    print("deleted the key from the OS keyring" if delete_key() else "the OS keyring held no key")
    return 0


def cmd_models_sync(args: argparse.Namespace) -> int:
    """Refresh the local price table from ``GET {base_url}/models`` (no key needed).

    The table is the one every run reads for costs and budgets, and it is OpenRouter's: prices
    listed by another endpoint (a proxy, a local server, a test double) replace it only with
    ``--force``, and the file then says where they came from (``_source``).

    Raises:
        UsageError: ``--base-url`` (or ``OPENROUTER_BASE_URL``) is not OpenRouter and
            ``--force`` was not given (exit 2, before anything is asked or written).
    """
    from urllib.parse import urlsplit

    from ..client import ApiKey, OpenRouterClient
    from ..client._endpoint import is_openrouter
    from ..errors import UsageError
    from ..paths import prices_path
    from ..pricing import write_synced_table
    from ..runtime import http_client
    from ._common import network_needed, resolve_base_url, run_trio

    base = resolve_base_url(args.base_url)
    parts = urlsplit(base)
    source = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"  # no password
    try:
        key = resolve_key()
    except UnusableKey:
        raise
    except SecretsError:
        key = ApiKey("", "none")
    if not is_openrouter(base) and not args.force:
        raise UsageError(
            f"models sync: {urlsplit(base).hostname} is not OpenRouter, and its prices would"
            f" replace OpenRouter's price table at {prices_path()}, which every run reads for"
            " costs and budgets. Pass --force to replace it anyway (a later `models sync`"
            " against OpenRouter brings OpenRouter's prices back)"
        )

    async def main() -> SyncReport:
        async with http_client(4) as http:
            models = await OpenRouterClient(http, key, base_url=base).list_models()
        return write_synced_table(models, prices_path(), source)

    with network_needed(base, "GET /models"):
        report = run_trio(main)
    if args.json:
        print(json.dumps({"file": str(prices_path()), "written": report.written,
                          "skipped": report.skipped, "source": source}))  # fmt: skip
        return 0
    print(f"wrote prices of {report.written} models from {source} to {prices_path()}")
    if report.skipped:
        print(
            f"skipped {report.skipped} listed models without a usable price"
            " (missing, not a number, negative or absurdly large)"
        )
    return 0
