"""Finding the files that ship with the package: the JSON Schema and the bundled workflows.

In a wheel they sit under ``demiarch_flow/_bundled/`` (hatchling force-includes the top-level
``schemas/`` and ``workflows/`` folders there); in a source checkout or an editable install they
are read from the repository root, so there is exactly one copy of each file in the repository.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled_path(folder: str, name: str) -> Path:
    """Return the path of a bundled file, e.g. ``bundled_path("workflows", "chat.yaml")``.

    Raises:
        FileNotFoundError: the file is neither in the installed package nor in the checkout.
    """
    packaged = resources.files("demiarch_flow").joinpath("_bundled", folder, name)
    if packaged.is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent / folder / name
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(f"bundled file {folder}/{name} is missing from this installation")


def default_workflow_path() -> Path:
    """The workflow used when a command is given none: the bundled ``workflows/chat.yaml``."""
    return bundled_path("workflows", "chat.yaml")
