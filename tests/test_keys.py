"""The API key: environment first, then the keyring; clear errors when neither works."""

from __future__ import annotations

import keyring
import pytest
from keyring.backends import fail

from demiarch_flow.errors import SecretsError, UnusableKey
from demiarch_flow.keys import SERVICE, USERNAME, delete_key, key_status, resolve_key, store_key

from .conftest import MemoryKeyring


def test_environment_takes_precedence(memory_keyring: MemoryKeyring) -> None:
    """OPENROUTER_API_KEY wins over a stored key."""
    store_key("sk-or-stored")
    key = resolve_key({"OPENROUTER_API_KEY": "sk-or-env"})
    assert (key.value, key.source) == ("sk-or-env", "environment")
    assert "sk-or-env" not in repr(key)
    assert "sk-or-env" not in str(key)


def test_keyring_is_used_when_no_variable(memory_keyring: MemoryKeyring) -> None:
    """Without the variable, the keyring's key (service demiarch-flow, user openrouter) is used."""
    store_key("  sk-or-stored\n")
    assert memory_keyring.secrets[(SERVICE, USERNAME)] == "sk-or-stored"
    key = resolve_key({})
    assert (key.value, key.source) == ("sk-or-stored", "keyring")
    assert "keyring" in key_status({})
    assert "sk-or-stored" not in key_status({})


def test_no_key_anywhere(memory_keyring: MemoryKeyring) -> None:
    """Neither variable nor stored key: a SecretsError saying how to fix it."""
    with pytest.raises(SecretsError, match="key set"):
        resolve_key({})
    assert delete_key() is False


def test_delete(memory_keyring: MemoryKeyring) -> None:
    """key delete removes the stored key."""
    store_key("sk-or-x")
    assert delete_key() is True
    assert memory_keyring.secrets == {}


def test_no_keyring_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A headless machine without a backend: the error names the variable to set instead."""
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        with pytest.raises(SecretsError, match="OPENROUTER_API_KEY") as info:
            resolve_key({})
        assert info.value.exit_code == 3
        with pytest.raises(SecretsError, match="no usable keyring"):
            store_key("sk-or-x")
        assert resolve_key({"OPENROUTER_API_KEY": "sk-or-env"}).source == "environment"
    finally:
        keyring.set_keyring(previous)


def test_resolved_key_is_redacted_whatever_its_shape(
    memory_keyring: MemoryKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolving the key registers it: any message cleaned afterwards loses it."""
    from demiarch_flow import errors

    monkeypatch.setattr(errors, "_SECRETS", set())
    key = resolve_key({"OPENROUTER_API_KEY": "my-proxy-token-0123456789"})
    assert errors.redact(f"echo: {key.value}") == "echo: [redacted]"
    store_key("other-stored-token-abcdef")
    resolve_key({})
    assert errors.redact("other-stored-token-abcdef") == "[redacted]"


@pytest.mark.parametrize("value", ["sk-or-abc\ndef", "clé-0123456789"])
def test_unsendable_key_is_an_environment_error(memory_keyring: MemoryKeyring, value: str) -> None:
    """A key with a newline or a non-ASCII character: exit 3 with the reason, never the key."""
    with pytest.raises(UnusableKey, match="cannot be sent in an HTTP header") as info:
        resolve_key({"OPENROUTER_API_KEY": value})
    assert info.value.exit_code == 3
    assert value not in str(info.value)
    with pytest.raises(UnusableKey):
        store_key(value)
    assert memory_keyring.secrets == {}
    assert "cannot be sent" in key_status({"OPENROUTER_API_KEY": value})


def test_short_key_works_and_status_notes_it(memory_keyring: MemoryKeyring) -> None:
    """A key under 8 characters still resolves; key status says it is not searched for."""
    assert resolve_key({"OPENROUTER_API_KEY": "abc"}).value == "abc"
    assert "shorter than 8 characters" in key_status({"OPENROUTER_API_KEY": "abc"})
    assert "shorter" not in key_status({"OPENROUTER_API_KEY": "sk-or-long-enough-key"})
