"""What the hub keeps: blobs (DICOM instances, source messages) on disk; the ledger, alerts,
person index and recognition registry in one SQLAlchemy database (``db``), migrated by Alembic."""

__all__: list[str] = []
