"""Marshmallow schemas: validation and (de)serialisation only; unknown fields are rejected."""
