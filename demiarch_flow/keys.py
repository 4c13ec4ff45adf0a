"""The OpenRouter API key: ``OPENROUTER_API_KEY`` first, then the OS keyring.

The key is read only here and travels only inside an :class:`~demiarch_flow.client.ApiKey`,
whose repr hides it. It is never taken from argv: ``key set`` reads a hidden prompt or stdin.
On a headless machine keyring has no backend (``NoKeyringError``); that is reported as a
:class:`~demiarch_flow.errors.SecretsError` that says how to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .client._endpoint import ApiKey, key_problem
from .errors import MIN_SECRET_LENGTH, SecretsError, UnusableKey, register_secret

SERVICE = "demiarch-flow"
USERNAME = "openrouter"
ENV_VAR = "OPENROUTER_API_KEY"

_HOW_TO_FIX = (
    f"Set one with `demiarch-flow key set` (stored in the OS keyring) or export {ENV_VAR}."
)


def _keyring_get() -> str | None:
    import keyring
    from keyring.errors import KeyringError, NoKeyringError

    try:
        return keyring.get_password(SERVICE, USERNAME)
    except NoKeyringError:
        raise SecretsError(
            "no API key: OPENROUTER_API_KEY is not set and this machine has no usable keyring"
            f" backend (common on headless machines). Export {ENV_VAR}=<your key>, or install"
            " a keyring backend and run `demiarch-flow key set`."
        ) from None
    except KeyringError as exc:
        raise SecretsError(
            f"the OS keyring could not be read ({type(exc).__name__}). {_HOW_TO_FIX}"
        ) from None


def resolve_key(environ: Mapping[str, str] | None = None) -> ApiKey:
    """The key to use, with its source (``environment`` or ``keyring``).

    Raises:
        SecretsError: there is no key, or the keyring cannot be used and no variable is set.
    """
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "").strip()
    if value:
        return _usable(ApiKey(value, "environment"))
    stored = _keyring_get()
    if stored:
        return _usable(ApiKey(stored, "keyring"))
    raise SecretsError(
        f"no API key: {ENV_VAR} is not set and the OS keyring holds none. {_HOW_TO_FIX}"
    )


def _usable(key: ApiKey) -> ApiKey:
    """Check that the key can be sent at all, and register it so that :func:`redact` removes
    it from every message from now on, whatever its shape (keys shorter than
    :data:`~demiarch_flow.errors.MIN_SECRET_LENGTH` work but are not searched for)."""
    if problem := key_problem(key.value):
        where = ENV_VAR if key.source == "environment" else "the key stored in the OS keyring"
        raise UnusableKey(f"{problem}: fix {where} (`demiarch-flow key status` says which is used)")
    register_secret(key.value)
    return key


def store_key(value: str) -> None:
    """Save ``value`` in the OS keyring.

    Raises:
        SecretsError: the key is empty or the keyring cannot be written.
    """
    import keyring
    from keyring.errors import KeyringError, NoKeyringError

    value = value.strip()
    if not value:
        raise SecretsError("no key given: nothing was stored")
    if problem := key_problem(value):
        raise UnusableKey(f"{problem}: nothing was stored")
    try:
        keyring.set_password(SERVICE, USERNAME, value)
    except NoKeyringError:
        raise SecretsError(
            "this machine has no usable keyring backend, so the key cannot be stored there;"
            f" export {ENV_VAR}=<your key> instead"
        ) from None
    except KeyringError as exc:
        raise SecretsError(f"the OS keyring refused the key ({type(exc).__name__})") from None


def delete_key() -> bool:
    """Remove the key from the keyring; ``False`` if there was none.

    Raises:
        SecretsError: the keyring cannot be used.
    """
    import keyring
    from keyring.errors import KeyringError, NoKeyringError, PasswordDeleteError

    try:
        keyring.delete_password(SERVICE, USERNAME)
    except PasswordDeleteError:
        return False
    except NoKeyringError:
        raise SecretsError(
            "this machine has no usable keyring backend; nothing to delete"
        ) from None
    except KeyringError as exc:
        raise SecretsError(f"the OS keyring could not be changed ({type(exc).__name__})") from None
    return True


def key_status(environ: Mapping[str, str] | None = None) -> str:
    """One sentence saying where the key would come from, never the key itself."""
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR, "").strip()
    if value:
        return (
            f"using the key from the {ENV_VAR} environment variable (it takes precedence over"
            " the keyring)" + _note(value)
        )
    try:
        stored = _keyring_get()
    except SecretsError as exc:
        return str(exc)
    if stored:
        return (
            f"using the key stored in the OS keyring (service {SERVICE!r}, user {USERNAME!r})"
            + _note(stored)
        )
    return f"no key: {ENV_VAR} is not set and the OS keyring holds none. {_HOW_TO_FIX}"


def _note(value: str) -> str:
    """What is wrong with a key that is there, in words that never show it."""
    if problem := key_problem(value):
        return f"; but {problem}"
    if len(value) < MIN_SECRET_LENGTH:
        return (
            f"; note: it is shorter than {MIN_SECRET_LENGTH} characters, so it is not removed"
            " from messages that might echo it (OpenRouter keys are much longer)"
        )
    return ""
