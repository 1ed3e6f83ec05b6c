"""Every table of the store, imported in one place so Alembic and the tests see the whole schema."""

from hub.store import identity, ledger, recognition  # noqa: F401  (the person index, the exam ledger, the registry)
from hub.store.db import Base

__all__ = ["Base"]
