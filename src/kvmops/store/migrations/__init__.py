"""Alembic migrations of the kvmops database (run by ``Store.migrate``)."""
