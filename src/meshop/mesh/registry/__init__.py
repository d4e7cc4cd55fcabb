"""Service registration and discovery."""

from __future__ import annotations

from meshop.mesh.registry.base import Instance, Registry, RegistryView
from meshop.mesh.registry.nats_kv import NatsKvRegistry
from meshop.mesh.registry.static import StaticRegistry

__all__ = ["Instance", "NatsKvRegistry", "Registry", "RegistryView", "StaticRegistry"]
