"""Events between services: the transactional outbox and its relay (`outbox`), idempotent
consumers with an inbox and dead letters (`consumer`), the JetStream streams and KV
buckets meshop creates (`streams`), and the admin operations that show the outbox and
the consumers, importable without a database (`admin`).
"""
