"""The exam ledger: exams with their state and timestamps, their transitions, and alerts.

Revision ID: 0001_ledger
Revises: 0000_base

ledger_transitions is keyed by (exam_id, transition, report_id), report_id "" for an exam's own
transitions, so a redelivered event inserts nothing. Indexes: ledger_exams by queued_at (the SLA
report's window), by (origin, queued_at) (an institution's exams) and by (sla_watch, due_at) (the SLA
check reads only open exams); ledger_alerts by exam_id, by (institution, raised_at) (a member's alerts),
by (acknowledged_at, raised_at) (the escalation check) and by published_at (the outbox).
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0001_ledger"
down_revision = "0000_base"
branch_labels = None
depends_on = None


def _at(name: str, nullable: bool = True) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "ledger_exams",
        sa.Column("exam_id", sa.String(64), nullable=False),
        sa.Column("origin", sa.String(64), nullable=False),
        sa.Column("centre", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(8), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        *(_at(f"{state}_at") for state in ("received", "queued", "in_reading", "preliminary", "final")),
        *(_at(f"{state}_at") for state in ("delivered", "amended", "cancelled", "parked")),
        _at("first_report_at"),
        _at("due_at"),
        sa.Column("report_id", sa.String(64), nullable=True),
        sa.Column("critical", sa.Boolean(), nullable=False),
        sa.Column("critical_count", sa.Integer(), nullable=False),
        sa.Column("breached", sa.Boolean(), nullable=False),
        sa.Column("sla_watch", sa.Boolean(), nullable=False),
        _at("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("exam_id", name=op.f("pk_ledger_exams")),
    )
    op.create_index("ix_ledger_exams_origin_queued_at", "ledger_exams", ["origin", "queued_at"])
    op.create_index("ix_ledger_exams_queued_at", "ledger_exams", ["queued_at"])
    op.create_index("ix_ledger_exams_sla_watch_due_at", "ledger_exams", ["sla_watch", "due_at"])
    op.create_table(
        "ledger_transitions",
        sa.Column("exam_id", sa.String(64), nullable=False),
        sa.Column("transition", sa.String(16), nullable=False),
        sa.Column("report_id", sa.String(64), nullable=False),
        _at("at", nullable=False),
        sa.Column("report_status", sa.String(16), nullable=True),
        _at("issued_at"),
        sa.Column("critical", sa.Boolean(), nullable=True),
        sa.Column("critical_count", sa.Integer(), nullable=True),
        sa.Column("endpoint", sa.String(200), nullable=True),
        sa.Column("detail", sa.String(200), nullable=True),
        sa.ForeignKeyConstraint(
            ["exam_id"], ["ledger_exams.exam_id"], name=op.f("fk_ledger_transitions_exam_id_ledger_exams")
        ),
        sa.PrimaryKeyConstraint("exam_id", "transition", "report_id", name=op.f("pk_ledger_transitions")),
    )
    op.create_table(
        "ledger_alerts",
        sa.Column("alert_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("institution", sa.String(64), nullable=False),
        sa.Column("exam_id", sa.String(64), nullable=False),
        sa.Column("origin", sa.String(64), nullable=False),
        sa.Column("centre", sa.String(16), nullable=False),
        sa.Column("priority", sa.String(8), nullable=True),
        sa.Column("report_id", sa.String(64), nullable=True),
        sa.Column("escalates", sa.String(40), nullable=True),
        _at("raised_at", nullable=False),
        _at("due_at"),
        sa.Column("critical_count", sa.Integer(), nullable=False),
        _at("escalated_at"),
        _at("acknowledged_at"),
        sa.Column("acknowledged_by", sa.String(100), nullable=True),
        _at("published_at"),
        sa.PrimaryKeyConstraint("alert_id", name=op.f("pk_ledger_alerts")),
    )
    op.create_index(op.f("ix_ledger_alerts_exam_id"), "ledger_alerts", ["exam_id"])
    op.create_index("ix_ledger_alerts_institution_raised_at", "ledger_alerts", ["institution", "raised_at"])
    op.create_index("ix_ledger_alerts_acknowledged_at_raised_at", "ledger_alerts", ["acknowledged_at", "raised_at"])
    op.create_index("ix_ledger_alerts_published_at", "ledger_alerts", ["published_at"])


def downgrade() -> None:
    op.drop_table("ledger_alerts")
    op.drop_table("ledger_transitions")
    op.drop_table("ledger_exams")
