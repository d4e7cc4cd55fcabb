"""How requests travel between processes: the HTTP server embedded in every process
(`server`), the lean pooled HTTP/1.1 client (`http_client`), and operations over NATS
request-reply (`nats`).
"""
