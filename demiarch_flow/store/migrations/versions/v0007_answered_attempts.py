"""Answers kept the moment they are whole, and what each attempt answered or failed with.

Revision 0007.

* ``run_attempts`` gains ``finish_reason``: committed (with the answer's text in
  ``partial_text``) the moment a stream delivers its ``finish_reason``, while the attempt still
  waits for the usage chunk. A process that dies or is cancelled in that wait leaves an answer a
  resume stores as the reply, instead of buying it again.
* ``run_attempts`` gains ``response_model`` (the model that answered, as the response named
  it) and ``error_message`` (a failed attempt's message, the provider's own words included), so
  ``runs show`` and a resume see what the run saw.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = ("finish_reason", "response_model", "error_message")


def upgrade() -> None:
    op.add_column("run_attempts", sa.Column("finish_reason", sa.String(32), nullable=True))
    op.add_column("run_attempts", sa.Column("response_model", sa.String(200), nullable=True))
    op.add_column("run_attempts", sa.Column("error_message", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_attempts") as batch:
        for column in reversed(_COLUMNS):
            batch.drop_column(column)
