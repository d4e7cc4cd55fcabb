"""Shipping quotes and shipments through a carrier adapter."""
