"""Alembic's environment for every service: migrate the connection it is handed."""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes["connection"]
context.configure(connection=connection, version_table=config.get_main_option("version_table"))
with context.begin_transaction():
    context.run_migrations()
