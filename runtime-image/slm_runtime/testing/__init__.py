"""Helpers for tests and demos: tiny generated models."""
