"""The recognition registry: recognised results, each report's outcome, QC passes, the lookup audit, overrides.

Revision ID: 0003_recognition
Revises: 0000_base
Depends on: 0002_identity (results, outcomes and overrides refer to persons)

Indexes for lookup (person, item, as of a day): persons.national_id (unique, in 0002) finds the
person; ix_recognised_results_lookup (person_id, item_code, item_system) finds that person's results
of the item, and ix_recognition_reports_lookup the same for reports that were not eligible. For
recording: recognised_results.source_report_id (unique), exam_id (the results an amended or
cancelled report supersedes or revokes) and revoked_by; recognition_reports.report_id is the key
that makes recording idempotent. recognition_qc (institution, item_code, valid_until) is unique;
the audit is indexed by time and person.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_recognition"
down_revision = "0000_base"
branch_labels = None
depends_on = "0002_identity"

RETEST_REASONS = (
    "emergency",
    "condition-changed",
    "fast-changing-value",
    "pre-surgery-or-transfusion",
    "forensic-assessment",
    "other",
)


def upgrade() -> None:
    op.create_table(
        "recognised_results",
        sa.Column("id", sa.String(35), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("item_system", sa.String(255), nullable=False),
        sa.Column("item_code", sa.String(64), nullable=False),
        sa.Column("item_display", sa.String(200), nullable=False),
        sa.Column("centre", sa.String(16), nullable=False),
        sa.Column("mark", sa.String(32), nullable=False),
        sa.Column("observations", sa.JSON(), nullable=False),
        sa.Column("attachments", sa.JSON(), nullable=False),
        sa.Column("valid_from", sa.Date(), nullable=False),
        sa.Column("valid_until", sa.Date(), nullable=False),
        sa.Column("exam_id", sa.String(64), nullable=False),
        sa.Column("source_report_id", sa.String(64), nullable=False),
        sa.Column("source_status", sa.String(16), nullable=False),
        sa.Column("origin", sa.String(64), nullable=False),
        sa.Column("performer_institution", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("superseded_by", sa.String(35), nullable=True),
        sa.Column("revoked_by", sa.String(64), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["person_id"], ["persons.id"], name=op.f("fk_recognised_results_person_id_persons")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recognised_results")),
        sa.UniqueConstraint("source_report_id", name=op.f("uq_recognised_results_source_report_id")),
    )
    op.create_index("ix_recognised_results_lookup", "recognised_results", ["person_id", "item_code", "item_system"])
    op.create_index(op.f("ix_recognised_results_exam_id"), "recognised_results", ["exam_id"])
    op.create_index(op.f("ix_recognised_results_revoked_by"), "recognised_results", ["revoked_by"])
    op.create_table(
        "recognition_reports",
        sa.Column("report_id", sa.String(64), nullable=False),
        sa.Column("exam_id", sa.String(64), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("item_system", sa.String(255), nullable=True),
        sa.Column("item_code", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("result_id", sa.String(35), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["person_id"], ["persons.id"], name=op.f("fk_recognition_reports_person_id_persons")),
        sa.PrimaryKeyConstraint("report_id", name=op.f("pk_recognition_reports")),
    )
    op.create_index("ix_recognition_reports_lookup", "recognition_reports", ["person_id", "item_code", "item_system"])
    op.create_table(
        "recognition_qc",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("institution", sa.String(64), nullable=False),
        sa.Column("item_code", sa.String(64), nullable=False),
        sa.Column("valid_until", sa.Date(), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recognition_qc")),
    )
    op.create_index(
        "ix_recognition_qc_institution_item", "recognition_qc", ["institution", "item_code", "valid_until"], unique=True
    )
    op.create_table(
        "recognition_lookups",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("who", sa.String(128), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("national_id_sha256", sa.String(64), nullable=True),
        sa.Column("item_system", sa.String(255), nullable=False),
        sa.Column("item_code", sa.String(64), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("results", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recognition_lookups")),
    )
    op.create_index(op.f("ix_recognition_lookups_at"), "recognition_lookups", ["at"])
    op.create_index(op.f("ix_recognition_lookups_person_id"), "recognition_lookups", ["person_id"])
    op.create_table(
        "recognition_overrides",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=False),
        sa.Column("item_system", sa.String(255), nullable=False),
        sa.Column("item_code", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("detail", sa.String(1000), nullable=True),
        sa.Column("clinician", sa.String(128), nullable=False),
        sa.Column("institution", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("overridden", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "reason IN ({})".format(", ".join(f"'{r}'" for r in RETEST_REASONS)),
            name=op.f("ck_recognition_overrides_reason"),
        ),
        sa.ForeignKeyConstraint(["person_id"], ["persons.id"], name=op.f("fk_recognition_overrides_person_id_persons")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recognition_overrides")),
    )
    op.create_index(op.f("ix_recognition_overrides_person_id"), "recognition_overrides", ["person_id"])


def downgrade() -> None:
    for table in (
        "recognition_overrides",
        "recognition_lookups",
        "recognition_qc",
        "recognition_reports",
        "recognised_results",
    ):
        op.drop_table(table)
