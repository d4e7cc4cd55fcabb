"""The `meshop` command line."""

from __future__ import annotations

from meshop.cli.main import app, main

__all__ = ["app", "main"]
