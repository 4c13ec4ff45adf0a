"""Spend and rate control: budget reservations, shared rate buckets, throttle rows.

Revision 0004.

* ``budget_reservations`` holds the worst-case cost of every attempt in flight (then its real
  cost until the run's usage row is written), so that budgets hold across processes.
* ``rate_buckets`` holds each shared rate bucket's GCRA state.
* ``run_events`` gains ``bucket``: the rate bucket a ``throttled`` row waited for.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

_UTC = sa.DateTime(timezone=True)
_USD = sa.Numeric(20, 9).with_variant(sa.String(32), "sqlite")


def upgrade() -> None:
    op.create_table(
        "budget_reservations",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("amount_usd", _USD, nullable=False),
        sa.Column("settled", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", _UTC, nullable=False),
        sa.Column("expires_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_budget_reservations"),
    )
    op.create_index("ix_budget_reservations_run_id", "budget_reservations", ["run_id"])
    op.create_index("ix_budget_reservations_expires_at", "budget_reservations", ["expires_at"])
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("tat", sa.Float(), nullable=False, server_default="0"),
        sa.Column("tat_tokens", sa.Float(), nullable=False, server_default="0"),
        sa.Column("paused_until", sa.Float(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("key", name="pk_rate_buckets"),
    )
    op.add_column("run_events", sa.Column("bucket", sa.String(200), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE run_events DROP COLUMN bucket")
    op.drop_table("rate_buckets")
    op.drop_index("ix_budget_reservations_expires_at", table_name="budget_reservations")
    op.drop_index("ix_budget_reservations_run_id", table_name="budget_reservations")
    op.drop_table("budget_reservations")
