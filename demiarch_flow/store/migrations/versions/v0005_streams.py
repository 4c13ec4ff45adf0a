"""Streamed replies: the text of an attempt whose stream broke is kept with the attempt.

Revision 0005.

* ``run_attempts`` gains ``partial_text``: what a streamed attempt had received when it was
  interrupted (or cancelled). It is never the reply; it is kept so ``runs show`` can say what
  the user saw, and what was billed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("run_attempts", sa.Column("partial_text", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("run_attempts") as batch:
        batch.drop_column("partial_text")
