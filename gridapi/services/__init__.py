"""Domain logic: plain functions that take a Session, may flush, never commit."""
