"""Differentiable neural architecture search: GDAS, DARTS and their relatives on cell supernets.

The Python API (nas/api.py): nas.search, nas.evaluate, nas.compare and nas.load_model, imported on first use so
that ``import nas`` stays light.
"""

from __future__ import annotations

from typing import Any

API = ("search", "evaluate", "compare", "load_model", "SearchResult", "EvalResult", "StudyResult")
__all__ = list(API)


def __getattr__(name: str) -> Any:
    if name in API:
        from nas import api

        return getattr(api, name)
    raise AttributeError(f"module 'nas' has no attribute {name!r}")
