"""The paid attempt: where "a paid answer is kept and paid once" lives.

A request to OpenRouter costs money and has no idempotency key: sent twice, it is billed twice.
Everything that keeps that promise for one attempt is in this package, in the order it runs:

- :mod:`._open` — :func:`open_attempt`: admit (the shared cooldown; the rate slot, concurrency
  permit and budget reservation of :mod:`~demiarch_flow.runner.limits`, given back in exactly
  one place each), record the attempt durably under a store-allocated number and only while
  this process owns the run, send, settle — and return a frozen :class:`AttemptResult`;
- :mod:`._send` — the request itself, blocking or streamed (the generation id committed the
  moment a chunk names it);
- :mod:`.books` — what a generation is counted as, and booking it exactly once
  (:class:`Booking`: ``reply``, ``interrupted``, ``billed``);
- :mod:`.rescue` — an answer that arrived but could not be stored goes to the recovery file.

Around it: the engine makes an answer's checkpoint durable the moment it arrives (so a crash
after that resumes into Persist, which stores it — never re-buys it), Persist looks its cost up
and stores it, and :mod:`~demiarch_flow.runner.resume` books what a crash left unbooked.
"""

from ._open import AttemptResult, open_attempt
from .books import Booking, answer_cost, looked_up, reply_of
from .rescue import keep_paid_answer, rescue_reply, store_reply, write_recovery

__all__ = [
    "AttemptResult",
    "Booking",
    "answer_cost",
    "keep_paid_answer",
    "looked_up",
    "open_attempt",
    "reply_of",
    "rescue_reply",
    "store_reply",
    "write_recovery",
]
