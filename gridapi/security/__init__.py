"""Credentials: password hashing, access tokens, API keys, permissions."""
