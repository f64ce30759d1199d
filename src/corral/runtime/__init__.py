"""Sandbox runtime: backends, isolation and resource control."""
