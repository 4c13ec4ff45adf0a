"""Alembic's environment for demiarch-flow, run by :mod:`demiarch_flow.store.schema`.

Online, it migrates the connection the caller passes in ``config.attributes["connection"]``,
inside the caller's transaction and lock, so that reading the revision and changing it are one
step that no other process can interleave. Offline (``db upgrade --sql``) it renders the DDL for
``config.attributes["dialect"]`` without connecting. SQLite gets batch mode, because it cannot
drop or alter a constraint in place.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from demiarch_flow.store.tables import Base


def run() -> None:
    config = context.config
    if context.is_offline_mode():
        dialect = str(config.attributes["dialect"])
        context.configure(
            dialect_name=dialect,
            target_metadata=Base.metadata,
            literal_binds=True,
            render_as_batch=dialect == "sqlite",
        )
    else:
        connection: Connection = config.attributes["connection"]
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
    with context.begin_transaction():
        context.run_migrations()


run()
