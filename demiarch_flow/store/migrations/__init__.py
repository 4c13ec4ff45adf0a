"""The Alembic migrations of the schema, shipped inside the package so they run from the wheel.

:mod:`demiarch_flow.store.schema` drives them programmatically (there is no ``alembic.ini``):
``env.py`` migrates the connection it is handed, and each file in ``versions/`` is one revision.

To add a revision: change the models in :mod:`demiarch_flow.store.tables`, copy the newest file
in ``versions/`` to ``vNNNN_<what>.py`` with ``down_revision`` set to the previous revision,
write its ``upgrade``/``downgrade`` (inside ``op.batch_alter_table`` for anything SQLite cannot
alter in place, with ``copy_from`` so ``db upgrade --sql`` can render it), and append its id to
:data:`demiarch_flow.store.schema.REVISIONS`. The drift test fails until the revisions build
exactly the models.
"""
