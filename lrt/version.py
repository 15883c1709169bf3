"""The lrt version, in one place.

Why a module of its own: pyproject.toml reads it (`[tool.setuptools.dynamic]`), the package root
re-exports it, and data/prep/export record it; those low layers import this leaf instead of the
package root (which lazily reaches config, rerank and train).
"""
from __future__ import annotations

__version__ = "0.1.0"
