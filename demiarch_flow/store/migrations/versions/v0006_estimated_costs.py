"""Estimated costs, and token counts that may be unknown.

Revision 0006.

* ``llm_usage.cost_source`` accepts ``estimated``: a cost the price table gives for token
  counts estimated from the text, because the response gave none, says so (it was booked as
  ``price_table``, or as 0 USD ``unknown``).
* ``llm_usage.prompt_tokens``, ``completion_tokens`` and ``total_tokens`` become nullable: a
  count the provider did not give, or gave past belief, is NULL. The columns were NOT NULL, so
  such a count was stored as 0, which a report cannot tell from a real 0; rows written before
  this revision keep their 0.

SQLite cannot alter a constraint or a column's nullability in place, so the table is rebuilt
in batch mode; ``copy_from`` describes it as it stands before each step (revision 0005 or
0006), so that offline mode (``db upgrade --sql``) renders the rebuild without reading the
database. PostgreSQL alters it in place.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

_TOKENS = ("prompt_tokens", "completion_tokens", "total_tokens")
_SOURCES_0005 = "cost_source IN ('provider', 'price_table', 'unknown')"
_SOURCES_0006 = "cost_source IN ('provider', 'price_table', 'estimated', 'unknown')"
_REPLY_ONLY = sa.text("outcome = 'reply'")


def _llm_usage(*, estimated: bool) -> sa.Table:
    """``llm_usage`` as revision 0006 (``True``) or 0005 (``False``) leaves it.

    Built from 0001's columns with what 0002 and 0003 changed: ``message_id`` nullable, the
    ``outcome`` column (last) and its check, plain indexes on ``generation_id`` and ``run_id``,
    and the partial unique index of one reply per run. Names are final (a plain ``MetaData``,
    no naming convention).
    """
    return sa.Table(
        "llm_usage",
        sa.MetaData(),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("conversation_id", sa.String(36), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=True),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.Column("project_id", sa.String(64), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("requested_model", sa.String(200), nullable=False),
        sa.Column("generation_id", sa.String(200), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=estimated),
        sa.Column("completion_tokens", sa.Integer(), nullable=estimated),
        sa.Column("total_tokens", sa.Integer(), nullable=estimated),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column(
            "cost_usd", sa.Numeric(20, 9).with_variant(sa.String(32), "sqlite"), nullable=False
        ),
        sa.Column("cost_source", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("request_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False, server_default="reply"),
        sa.CheckConstraint(
            _SOURCES_0006 if estimated else _SOURCES_0005, name="ck_llm_usage_cost_source"
        ),
        sa.CheckConstraint(
            "outcome IN ('reply', 'billed', 'interrupted')", name="ck_llm_usage_outcome"
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_llm_usage_conversation_id_conversations",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"], ["chat_messages.id"], name="fk_llm_usage_message_id_chat_messages"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_llm_usage"),
        sa.Index("ix_llm_usage_conversation_id", "conversation_id"),
        sa.Index("ix_llm_usage_request_timestamp", "request_timestamp"),
        sa.Index("ix_llm_usage_generation_id", "generation_id"),
        sa.Index("ix_llm_usage_run_id", "run_id"),
        sa.Index(
            "uq_llm_usage_reply_run_id",
            "run_id",
            unique=True,
            sqlite_where=_REPLY_ONLY,
            postgresql_where=_REPLY_ONLY,
        ),
    )


def upgrade() -> None:
    with op.batch_alter_table("llm_usage", copy_from=_llm_usage(estimated=False)) as batch:
        batch.drop_constraint(op.f("ck_llm_usage_cost_source"), type_="check")
        batch.create_check_constraint(op.f("ck_llm_usage_cost_source"), _SOURCES_0006)
        for column in _TOKENS:
            batch.alter_column(column, existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    # 0005 has no unknown count and no estimated cost: an unknown count is 0 again (a total,
    # the sum of the parts known) and an estimate was priced from the table.
    op.execute(
        "UPDATE llm_usage SET"
        " total_tokens = COALESCE(total_tokens,"
        " COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)),"
        " prompt_tokens = COALESCE(prompt_tokens, 0),"
        " completion_tokens = COALESCE(completion_tokens, 0)"
        " WHERE prompt_tokens IS NULL OR completion_tokens IS NULL OR total_tokens IS NULL"
    )
    op.execute("UPDATE llm_usage SET cost_source = 'price_table' WHERE cost_source = 'estimated'")
    with op.batch_alter_table("llm_usage", copy_from=_llm_usage(estimated=True)) as batch:
        for column in _TOKENS:
            batch.alter_column(column, existing_type=sa.Integer(), nullable=False)
        batch.drop_constraint(op.f("ck_llm_usage_cost_source"), type_="check")
        batch.create_check_constraint(op.f("ck_llm_usage_cost_source"), _SOURCES_0005)
