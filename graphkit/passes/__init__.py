"""Graph passes. Every module in this package registers its passes on import."""

from __future__ import annotations

import importlib
import pkgutil

from graphkit.passes.base import REGISTRY, PassInfo, PassResult, get_pass, register

_loaded = False


def load_all() -> dict[str, PassInfo]:
    """Import every pass module so the registry is complete."""
    global _loaded
    if not _loaded:
        for mod in pkgutil.iter_modules(__path__):
            if mod.name != "base" and not mod.name.startswith("_"):
                importlib.import_module(f"{__name__}.{mod.name}")
        _loaded = True
    return REGISTRY


__all__ = ["REGISTRY", "PassInfo", "PassResult", "get_pass", "load_all", "register"]
