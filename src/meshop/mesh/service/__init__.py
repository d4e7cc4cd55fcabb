"""The service process: its lifecycle from start to a drained, deregistered stop
(`lifecycle`) and its settings, read once from `MESHOP_*` variables (`settings`).
"""
