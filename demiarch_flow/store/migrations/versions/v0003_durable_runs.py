"""Durable runs: checkpoints, attempts, owners, definitions, and usage rows without a reply.

Revision 0003.

* ``workflow_runs`` gains ``state_json`` (the run's last checkpoint), ``owner`` and
  ``heartbeat_at`` (which process runs it, and when it last said so: a run left ``running`` by
  a dead process is *stale*) and ``resume_count``.
* ``run_events`` gains ``wait_source`` (``backoff``, ``retry_after`` or ``cooldown``).
* ``workflow_definitions`` keeps each workflow text a run started with, once per SHA-256.
* ``run_attempts`` holds every request a run sent, written *before* it is sent.
* ``llm_usage`` can book a billed generation that has no stored reply (``message_id`` NULL,
  ``outcome`` ``billed`` or ``interrupted``); "one reply per run" becomes a partial unique index
  over the ``reply`` rows only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from demiarch_flow.store.migrations.versions.v0002_one_reply_per_run import _llm_usage

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

_UTC = sa.DateTime(timezone=True)
_REPLY_ONLY = sa.text("outcome = 'reply'")


def upgrade() -> None:
    op.add_column("workflow_runs", sa.Column("state_json", sa.Text(), nullable=True))
    op.add_column("workflow_runs", sa.Column("owner", sa.String(200), nullable=True))
    op.add_column("workflow_runs", sa.Column("heartbeat_at", _UTC, nullable=True))
    op.add_column(
        "workflow_runs",
        sa.Column("resume_count", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("run_events", sa.Column("wait_source", sa.String(16), nullable=True))
    op.create_table(
        "workflow_definitions",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", _UTC, nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_workflow_definitions"),
    )
    op.create_table(
        "run_attempts",
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("started_at", _UTC, nullable=False),
        sa.Column("ended_at", _UTC, nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("error_class", sa.String(32), nullable=True),
        sa.Column("generation_id", sa.String(200), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["workflow_runs.id"], name="fk_run_attempts_run_id_workflow_runs"
        ),
        sa.PrimaryKeyConstraint("run_id", "number", name="pk_run_attempts"),
    )
    op.create_index("ix_run_attempts_generation_id", "run_attempts", ["generation_id"])
    with op.batch_alter_table("llm_usage", copy_from=_llm_usage(one_reply_per_run=True)) as batch:
        batch.alter_column("message_id", existing_type=sa.String(36), nullable=True)
        batch.add_column(
            sa.Column("outcome", sa.String(16), nullable=False, server_default="reply")
        )
        batch.create_check_constraint(
            op.f("ck_llm_usage_outcome"), "outcome IN ('reply', 'billed', 'interrupted')"
        )
        batch.drop_index("ix_llm_usage_run_id")
        batch.create_index("ix_llm_usage_run_id", ["run_id"], unique=False)
    op.create_index(
        "uq_llm_usage_reply_run_id",
        "llm_usage",
        ["run_id"],
        unique=True,
        sqlite_where=_REPLY_ONLY,
        postgresql_where=_REPLY_ONLY,
    )


def downgrade() -> None:
    op.drop_index("uq_llm_usage_reply_run_id", table_name="llm_usage")
    # Rows without a reply cannot exist in 0002's table: they go (their spend was booked on
    # resume or for an interrupted stream, which 0002 knows nothing about).
    op.execute("DELETE FROM llm_usage WHERE outcome <> 'reply'")
    table = _llm_usage(one_reply_per_run=True)
    table.append_column(sa.Column("outcome", sa.String(16), nullable=False, server_default="reply"))
    table.c.message_id.nullable = True
    table.append_constraint(
        sa.CheckConstraint(
            "outcome IN ('reply', 'billed', 'interrupted')", name=op.f("ck_llm_usage_outcome")
        )
    )
    with op.batch_alter_table("llm_usage", copy_from=table) as batch:
        batch.drop_index("ix_llm_usage_run_id")
        batch.create_index("ix_llm_usage_run_id", ["run_id"], unique=True)
        batch.drop_constraint(op.f("ck_llm_usage_outcome"), type_="check")
        batch.drop_column("outcome")
        batch.alter_column("message_id", existing_type=sa.String(36), nullable=False)
    op.drop_index("ix_run_attempts_generation_id", table_name="run_attempts")
    op.drop_table("run_attempts")
    op.drop_table("workflow_definitions")
    # Plain DROP COLUMN (SQLite has it since 3.35): a batch rebuild of workflow_runs would
    # break the foreign keys that point at it.
    op.execute("ALTER TABLE run_events DROP COLUMN wait_source")
    for column in ("resume_count", "heartbeat_at", "owner", "state_json"):
        op.execute(f"ALTER TABLE workflow_runs DROP COLUMN {column}")
