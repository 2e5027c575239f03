"""Where the shipped LLaMA-Factory recipes (``yaml/``) are: package data in a wheel, the repository's
``yaml/`` folder in an editable install."""

from __future__ import annotations

from pathlib import Path

PACKAGED = Path(__file__).parent / "recipes"  # what a wheel installs (pyproject force-include)
REPOSITORY = Path(__file__).resolve().parents[1] / "yaml"  # an editable install's checkout


def recipes_dir() -> Path:
    for candidate in (PACKAGED, REPOSITORY):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"lf_ext's recipes are missing: neither {PACKAGED} nor {REPOSITORY} exists")


def recipe(name: str) -> Path:
    """A recipe by its path under ``yaml/``, e.g. ``tiny/stage1_projector.yaml``."""
    path = recipes_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"no recipe {name} in {recipes_dir()}")
    return path
