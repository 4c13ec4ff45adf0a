"""One reply per run, not per generation id.

Revision 0002. The first release kept ``llm_usage.generation_id`` unique and treated a second
reply with the same id as already stored; an endpoint that reuses response ids across runs
(caching proxies, some OpenAI-compatible servers) then lost the second run's reply while the run
said it succeeded. Now the run is the key: a unique index on ``llm_usage.run_id``, and a plain
index on ``generation_id`` for look-ups.

SQLite cannot drop a constraint in place, so the table is rebuilt in batch mode; ``copy_from``
describes it as it stands before each step, so that offline mode (``db upgrade --sql``) can
render the rebuild without reading the database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def _llm_usage(*, one_reply_per_run: bool) -> sa.Table:
    """``llm_usage`` as revision 0002 (``True``) or 0001 (``False``) leaves it."""
    utc = sa.DateTime(timezone=True)
    table = sa.Table(
        "llm_usage",
        sa.MetaData(),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("conversation_id", sa.String(36), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.Column("project_id", sa.String(64), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("requested_model", sa.String(200), nullable=False),
        sa.Column("generation_id", sa.String(200), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("total_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column(
            "cost_usd", sa.Numeric(20, 9).with_variant(sa.String(32), "sqlite"), nullable=False
        ),
        sa.Column("cost_source", sa.String(16), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("request_timestamp", utc, nullable=False),
        sa.CheckConstraint(
            "cost_source IN ('provider', 'price_table', 'unknown')",
            name="ck_llm_usage_cost_source",
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
    )
    if one_reply_per_run:
        sa.Index("ix_llm_usage_generation_id", table.c.generation_id)
        sa.Index("ix_llm_usage_run_id", table.c.run_id, unique=True)
    else:
        table.append_constraint(
            sa.UniqueConstraint("generation_id", name="uq_llm_usage_generation_id")
        )
    return table


def upgrade() -> None:
    with op.batch_alter_table("llm_usage", copy_from=_llm_usage(one_reply_per_run=False)) as batch:
        batch.drop_constraint("uq_llm_usage_generation_id", type_="unique")
        batch.create_index("ix_llm_usage_generation_id", ["generation_id"], unique=False)
        batch.create_index("ix_llm_usage_run_id", ["run_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("llm_usage", copy_from=_llm_usage(one_reply_per_run=True)) as batch:
        batch.drop_index("ix_llm_usage_run_id")
        batch.drop_index("ix_llm_usage_generation_id")
        batch.create_unique_constraint("uq_llm_usage_generation_id", ["generation_id"])
