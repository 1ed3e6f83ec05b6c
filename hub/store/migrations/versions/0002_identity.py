"""The person index: persons, the local ids linked to them, and the demographic conflicts found.

Revision ID: 0002_identity
Revises: 0000_base

Indexes: persons.national_id is unique (the match key, and lookup by resident ID number);
person_local_ids has (institution, system, value) unique, (institution, value) for a lookup that
names no system, and person_id for a person's links; person_conflicts.person_id.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_identity"
down_revision = "0000_base"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "persons",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("national_id", sa.String(18), nullable=True),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("sex", sa.String(8), nullable=False),
        sa.Column("birth_date", sa.Date(), nullable=True),
        sa.Column("merged_into", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["merged_into"], ["persons.id"], name=op.f("fk_persons_merged_into_persons")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_persons")),
        sa.UniqueConstraint("national_id", name=op.f("uq_persons_national_id")),
    )
    op.create_table(
        "person_local_ids",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("institution", sa.String(64), nullable=False),
        sa.Column("system", sa.String(255), nullable=False),
        sa.Column("value", sa.String(128), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["person_id"], ["persons.id"], name=op.f("fk_person_local_ids_person_id_persons")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_person_local_ids")),
        sa.UniqueConstraint("institution", "system", "value", name=op.f("uq_person_local_ids_institution")),
    )
    op.create_index("ix_person_local_ids_institution_value", "person_local_ids", ["institution", "value"])
    op.create_index(op.f("ix_person_local_ids_person_id"), "person_local_ids", ["person_id"])
    op.create_table(
        "person_conflicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("field", sa.String(16), nullable=False),
        sa.Column("held", sa.String(255), nullable=False),
        sa.Column("incoming", sa.String(255), nullable=False),
        sa.Column("origin", sa.String(64), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["person_id"], ["persons.id"], name=op.f("fk_person_conflicts_person_id_persons")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_person_conflicts")),
    )
    op.create_index(op.f("ix_person_conflicts_person_id"), "person_conflicts", ["person_id"])


def downgrade() -> None:
    op.drop_table("person_conflicts")
    op.drop_table("person_local_ids")
    op.drop_table("persons")
