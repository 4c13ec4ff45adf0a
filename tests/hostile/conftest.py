"""The hostile corpora run the real CLI too: the end-to-end fixtures, shared."""

from ..e2e.conftest import cli

__all__ = ["cli"]
