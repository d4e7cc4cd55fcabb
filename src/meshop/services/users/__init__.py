"""Accounts, password hashing, identity tokens and the JWKS."""
