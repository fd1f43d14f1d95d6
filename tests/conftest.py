"""Shared pytest setup: the suite runs against the source tree."""
