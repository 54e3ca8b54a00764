"""Shared types and the Qt-free fusion engine."""
