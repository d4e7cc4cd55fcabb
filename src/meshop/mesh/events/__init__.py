"""Events between services: the transactional outbox and its relay (`outbox`), idempotent
consumers with an inbox and dead letters (`consumer`), and the admin operations that show
the outbox and the consumers, importable without a database (`admin`). The streams they
use are created by `meshop.mesh.jetstream`.
"""
