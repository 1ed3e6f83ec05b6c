"""Alembic's environment for the hub: migrations run on the connection ``Database.migrate`` gives."""

from __future__ import annotations

from alembic import context

import hub.store.models  # noqa: F401  (every model registers its table on Base.metadata)
from hub.store.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
