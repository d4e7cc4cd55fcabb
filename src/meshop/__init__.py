"""meshop: a Python microservices platform (the mesh) and the shop built on it."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
