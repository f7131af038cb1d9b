"""Geometry helpers: geodesic measurement and validation of grid boundary files."""
