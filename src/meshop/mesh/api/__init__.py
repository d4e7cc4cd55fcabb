"""What a service serves: operations defined once (`operation`), the typed route layer
that serves them (`routing`), their OpenAPI documents (`openapi`), validation messages a
user can act on (`validation`) and keyset pagination (`pagination`).
"""
