"""Persistent records (SQLAlchemy; SQLite by default, PostgreSQL when configured)."""
