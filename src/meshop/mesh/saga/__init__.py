"""Sagas: steps undone by compensations if a later one fails, run and resumed by the
orchestrator (`orchestrator`), and their log in the owning service's SQL database (`log`).
"""
