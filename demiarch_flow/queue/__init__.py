"""Runs on many machines: ``submit``, ``worker`` and ``runs wait`` on procrastinate.

A submitted run *is* a procrastinate job (:mod:`.submit`): the job's arguments carry what the
run asks (message, conversation, model, the workflow's SHA-256, whose text is kept in
``workflow_definitions``), so a run cannot be queued without its job nor a job exist without
its run — there is one row. A ``worker`` (:mod:`.worker`) is procrastinate's asyncio worker
with the trio runner inside it as a guest (:mod:`.guest`): each job is handed to trio, where
:func:`.take.take_run` starts the run, or continues it the way ``runs resume`` does (an ended
run is a no-op, a paid answer is never asked again, a run a live process owns is left to it).
procrastinate gives at-least-once delivery; the run's own records make it paid once.

The queue's tables are procrastinate's own schema, installed and upgraded by ``db upgrade``
beside ours (:mod:`.schema`). PostgreSQL only: procrastinate needs ``LISTEN/NOTIFY`` and
``SKIP LOCKED``. Everything here is imported only by the commands that use it, so the rest of
demiarch-flow runs without procrastinate installed.
"""
