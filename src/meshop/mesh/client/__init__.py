"""Calling other services: the service client and its resilience chain (`client`),
client-side load balancers (`balancing`) and zone-aware picking (`zones`).
"""
