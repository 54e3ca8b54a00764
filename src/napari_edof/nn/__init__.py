"""Torch helpers: device choice, weights cache, shared blocks (imported only by torch methods)."""
