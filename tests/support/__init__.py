"""Helpers shared by the client tests."""
