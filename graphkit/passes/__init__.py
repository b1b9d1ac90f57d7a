"""Graph passes. Every module in this package registers its passes on import."""

from __future__ import annotations

from graphkit.passes.base import REGISTRY, PassInfo, PassResult, get_pass, load_all, register

__all__ = ["REGISTRY", "PassInfo", "PassResult", "get_pass", "load_all", "register"]
