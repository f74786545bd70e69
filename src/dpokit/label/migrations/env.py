"""Alembic environment: migrations run on the connection `migrations.upgrade` hands over (never from a URL here)."""
from alembic import context

from dpokit.label.store import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("dpokit's label migrations run from code: dpokit.label.migrations.upgrade(engine)")
# render_as_batch: SQLite alters a table by copying it, which batch mode does for us
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
