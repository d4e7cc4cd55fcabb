"""Payments through a provider adapter: authorize, capture, void, refund."""
