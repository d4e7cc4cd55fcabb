"""Each service's own database: engine, creation, migrations and one-time init (`store`),
SQLite on the event loop (`_sqlite`), the migration child process (`migrate`) and
Alembic's environment (`_migration_env`).
"""
