"""A run as an OpenTelemetry trace, drawn from its records (:class:`OtelTracer`).

Spans are made after the fact, with the times the records carry: a ``chat {model}`` span starts
``latency_ms`` before its ``attempt`` record and ends at it, a wait span runs from its ``wait``
record to the run's next record. Times are the run's trio clock laid on the wall clock of its
start, so a run under ``MockClock`` (``simulate``, the tests) draws its virtual timeline.

Every string from outside — what a server answered (the model, the generation id, the finish
reason) and message content — passes :func:`~demiarch_flow.errors.redact` first: a server that
echoes the API key in a model name or an id does not get it exported. The rest are our own
names (states, events, the workflow's models, error classes). Free-text messages are never
exported; message content only with ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TracerProvider,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .. import __version__
from ..errors import redact, secrets_registered
from ..runner.records import FlowRecord, RunStart
from ._direct import LightTracer

log = logging.getLogger("demiarch_flow")

PROVIDER = "openrouter"
"""``gen_ai.provider.name`` of every chat span (an OpenAI-compatible endpoint named with
``--base-url`` is told apart by ``server.address``)."""

#: The bucket boundaries the GenAI conventions advise for the two client histograms.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)  # fmt: skip
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # fmt: skip

_W3C = TraceContextTextMapPropagator()


@dataclass
class _Run:
    """What the tracer holds of one run between its start and its ``finished`` record."""

    root: Span
    ctx: Context
    """The root as a parent."""
    anchor_ns: int
    anchor_mono: float
    input: str | None
    wait: Span | None = None
    cost: Decimal = field(default_factory=lambda: Decimal(0))
    answered_cost_known: bool = False


_CLEAN: dict[str, str] = {}
_CLEAN_FOR = [-1]


def _clean(text: str | None) -> str | None:
    """:func:`~demiarch_flow.errors.redact` of what came from outside (a server's model name,
    id, finish reason), remembered — the same few come back in every run — and forgotten
    whenever another secret is registered."""
    if text is None:
        return None
    known = secrets_registered()
    if _CLEAN_FOR[0] != known or len(_CLEAN) > 4096:
        _CLEAN.clear()
        _CLEAN_FOR[0] = known
    done = _CLEAN.get(text)
    if done is None:
        done = _CLEAN[text] = redact(text)
    return done


def _some(attrs: dict[str, Any]) -> dict[str, Any]:
    """The attributes that are known (OpenTelemetry has no null)."""
    return {k: v for k, v in attrs.items() if v is not None}


def _keep(attrs: dict[str, Any]) -> dict[str, Any]:
    return attrs


def _usd(amount: Decimal | None) -> float | None:
    return None if amount is None else float(amount)


class OtelTracer:
    """The runs of one process as traces and ``gen_ai.client.*`` metrics.

    A :class:`~demiarch_flow.runner.records.Listener` and the engine's
    :class:`~demiarch_flow.runner.records.RunTracer`. It never fails a run: anything it cannot
    do is logged at debug level and skipped.

    Args:
        server_url: the endpoint's base URL (``server.address`` / ``server.port``).
        tracer_provider, meter_provider: default: the global ones (a program's own).
        environ: where ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is read.
    """

    def __init__(
        self,
        *,
        server_url: str,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._tracer = trace.get_tracer("demiarch_flow", __version__, tracer_provider)
        # A light span (the direct path) keeps attributes whose value is None and never
        # exports them: the attributes are not filtered twice.
        self._light = self._tracer if isinstance(self._tracer, LightTracer) else None
        self._some = _keep if self._light is not None else _some
        meter = metrics.get_meter("demiarch_flow", __version__, meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", "s", "GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage", "{token}", "Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )  # fmt: skip
        self._first_chunk = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk", "s",
            "Time from sending a streamed request until its first content chunk.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )  # fmt: skip
        # The spend is a sum kept here and observed at each collection: a counter's add()
        # would cost a run a fourth metric point (its attributes cleaned, copied and hashed).
        self._spent: dict[tuple[str | None, ...], tuple[dict[str, Any], list[Decimal]]] = {}
        meter.create_observable_counter(
            "demiarch_flow.client.cost", [self._observe_spend], "USD",
            "What the attempts cost, as the provider said.",
        )  # fmt: skip
        url = urlsplit(server_url)
        default_port = 443 if url.scheme == "https" else 80
        self._server = _some(
            {"server.address": url.hostname, "server.port": url.port or default_port}
        )
        env = os.environ if environ is None else environ
        capture = env.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "")
        self._capture = capture.strip().lower() == "true"
        self._runs: dict[str, _Run] = {}
        self._commons: dict[tuple[str | None, ...], dict[str, Any]] = {}
        self._token_attrs: dict[tuple[str | None, ...], tuple[dict[str, Any], ...]] = {}

    # ------------------------------------------------------------------ the run's root

    def start_run(self, start: RunStart) -> str | None:
        """Open the run's ``invoke_workflow`` span: under the context kept with a resumed run
        (or the job's ``traceparent``), else under the caller's current span. Returns the
        ``traceparent`` to keep: a resumed run keeps the first one, so every resume is a child
        of the run's first root and the whole run is one trace."""
        try:
            return self._start(start)
        except Exception:  # tracing never fails a run
            log.debug("could not open the run's trace", exc_info=True)
            return start.trace

    def _start(self, start: RunStart) -> str | None:
        parent = _W3C.extract({"traceparent": start.trace}) if start.trace else None
        anchor_ns = int(start.wall.timestamp() * 1e9)
        root = self._tracer.start_span(
            f"invoke_workflow {start.workflow}",
            context=parent,
            kind=SpanKind.INTERNAL,
            start_time=anchor_ns,
            attributes=self._some({
                "gen_ai.operation.name": "invoke_workflow",
                "gen_ai.workflow.name": start.workflow,
                "demiarch_flow.run.id": start.run_id,
                "demiarch_flow.workflow.sha256": start.workflow_sha256,
                "gen_ai.conversation.id": start.conversation_id,
                "demiarch_flow.run.resume_count": start.resume_count,
            }),
        )  # fmt: skip
        ctx = trace.set_span_in_context(root)
        self._runs[start.run_id] = _Run(root, ctx, anchor_ns, start.monotonic, start.message)
        if start.trace and start.resume_count > 0:
            return start.trace
        return _span_traceparent(root) or start.trace

    def submitted(self, run_id: str, workflow: str | None = None) -> str | None:
        """A ``submit`` span for a run put on the queue (a child of the caller's current
        span), ended at once; returns its ``traceparent``, for the job to carry. The worker
        that takes the job passes it as ``RunRequest(traceparent=…)``: the run's root is then
        the submit's child, and one trace shows submit → queue wait → run → attempts."""
        try:
            span = self._tracer.start_span(
                "submit",
                kind=SpanKind.PRODUCER,
                attributes=self._some({
                    "messaging.operation.type": "send", "demiarch_flow.run.id": run_id,
                    "gen_ai.workflow.name": workflow,
                }),
            )  # fmt: skip
            span.end()
            return _span_traceparent(span)
        except Exception:  # tracing never fails a submit
            log.debug("could not trace a submit", exc_info=True)
            return None

    # ------------------------------------------------------------------ records

    async def on_record(self, r: FlowRecord) -> None:
        if r.kind == "delta":
            return
        run = self._runs.get(r.run_id)
        if run is None:
            return
        try:
            self._on(run, r)
        except Exception:  # tracing never fails a run
            log.debug("could not trace a %s record", r.kind, exc_info=True)

    def _on(self, run: _Run, r: FlowRecord) -> None:
        at = run.anchor_ns + round((r.monotonic - run.anchor_mono) * 1e9)
        if run.wait is not None:
            run.wait.end(end_time=at)
            run.wait = None
        if r.kind == "attempt":
            self._attempt(run, r, at)
        elif r.kind == "transition":
            run.root.add_event("transition", self._some({
                "demiarch_flow.from": r.from_state, "demiarch_flow.event": r.event,
                "demiarch_flow.to": r.to_state, "demiarch_flow.model": r.model,
                "demiarch_flow.attempt": r.attempt, "error.type": r.error_class,
                "demiarch_flow.wait_s": r.wait_s, "demiarch_flow.wait_source": r.wait_source,
            }), at)  # fmt: skip
        elif r.kind == "wait":
            run.wait = self._tracer.start_span(
                f"wait {r.wait_source or 'backoff'}",
                context=run.ctx,
                start_time=at,
                attributes=self._some({
                    "demiarch_flow.wait_s": r.wait_s, "demiarch_flow.wait_source": r.wait_source,
                    "demiarch_flow.model": r.model, "demiarch_flow.attempt": r.attempt,
                    "error.type": r.error_class,
                }),
            )  # fmt: skip
        elif r.kind in ("fallback", "cooldown"):
            run.root.add_event(r.kind, self._some({
                "demiarch_flow.event": r.event, "demiarch_flow.model": r.model,
                "demiarch_flow.next_model": r.next_model, "error.type": r.error_class,
                "demiarch_flow.wait_s": r.wait_s,
            }), at)  # fmt: skip
        elif r.kind == "finished":
            self._finish(run, r, at)

    def _common(self, r: FlowRecord) -> tuple[tuple[str | None, ...], dict[str, Any]]:
        """The attributes a chat span shares with its metric points (few distinct: cached),
        and their key."""
        key = (r.model, r.response_model, r.error_class)
        common = self._commons.get(key)
        if common is None:
            if len(self._commons) > 1024:
                self._commons.clear()
                self._token_attrs.clear()
            common = self._commons[key] = _some({
                "gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDER,
                "gen_ai.request.model": r.model,
                "gen_ai.response.model": _clean(r.response_model),
                "error.type": r.error_class, **self._server,
            })  # fmt: skip
        return key, common

    def _attempt(self, run: _Run, r: FlowRecord, at: int) -> None:
        key, common = self._common(r)
        span_attrs: dict[str, Any] = {
            "gen_ai.response.id": _clean(r.response_id),
            "gen_ai.usage.input_tokens": r.input_tokens,
            "gen_ai.usage.output_tokens": r.output_tokens,
            "gen_ai.request.stream": r.streamed,
            "gen_ai.response.time_to_first_chunk": None
            if r.first_token_ms is None else r.first_token_ms / 1000,
            "http.response.status_code": r.status, "demiarch_flow.attempt": r.attempt,
            "demiarch_flow.cost_usd": _usd(r.cost_usd), "demiarch_flow.stream.cause": r.cause,
            "demiarch_flow.stream.partial_chars": r.partial_chars,
        }  # fmt: skip
        if self._light is None:
            span_attrs = _some({**common, **span_attrs})
        if r.finish_reason:
            span_attrs["gen_ai.response.finish_reasons"] = (_clean(r.finish_reason),)
        if self._capture and run.input is not None:
            span_attrs["gen_ai.input.messages"] = _messages("user", run.input)
            if r.text is not None:
                span_attrs["gen_ai.output.messages"] = _messages("assistant", r.text)
        latency_ns = (r.latency_ms or 0) * 1_000_000
        if self._light is not None:  # the common attributes first, encoded once
            span: Span = self._light.start_span(
                f"chat {r.model}", run.ctx, SpanKind.CLIENT, span_attrs,
                start_time=at - latency_ns, shared=common,
            )  # fmt: skip
        else:
            span = self._tracer.start_span(
                f"chat {r.model}",
                context=run.ctx,
                kind=SpanKind.CLIENT,
                start_time=at - latency_ns,
                attributes=span_attrs,
            )
        if r.error_class is not None:
            span.set_status(Status(StatusCode.ERROR, str(r.error_class)))
        span.end(end_time=at)
        self._duration.record((r.latency_ms or 0) / 1000, common)
        if r.input_tokens is not None or r.output_tokens is not None:
            by_type = self._token_attrs.get(key)
            if by_type is None:  # made, and forgotten, with the common attributes
                by_type = self._token_attrs[key] = tuple(
                    {**common, "gen_ai.token.type": kind} for kind in ("input", "output")
                )
            if r.input_tokens is not None:
                self._tokens.record(r.input_tokens, by_type[0])
            if r.output_tokens is not None:
                self._tokens.record(r.output_tokens, by_type[1])
        if r.first_token_ms is not None:
            self._first_chunk.record(r.first_token_ms / 1000, common)
        if r.cost_usd is not None:
            run.cost += r.cost_usd
            run.answered_cost_known = run.answered_cost_known or r.error_class is None
            spent = self._spent.get(key)
            if spent is None:
                spent = self._spent[key] = (common, [Decimal(0)])
            spent[1][0] += r.cost_usd

    def _finish(self, run: _Run, r: FlowRecord, at: int) -> None:
        del self._runs[r.run_id]
        cost = run.cost
        if r.cost_usd is not None and not run.answered_cost_known:
            cost += r.cost_usd  # the reply's cost was learnt after its attempt (Persist)
        root = run.root
        root.set_attributes(self._some({
            "gen_ai.conversation.id": r.conversation_id,
            "demiarch_flow.run.status": r.run_status,
            "demiarch_flow.run.final_state": r.to_state,
            "demiarch_flow.run.attempts": r.attempts, "demiarch_flow.run.cost_usd": _usd(cost),
            "gen_ai.response.model": _clean(r.model),
        }))  # fmt: skip
        if r.run_status != "succeeded":
            if r.error_class is not None:
                root.set_attribute("error.type", str(r.error_class))
            root.set_status(Status(StatusCode.ERROR, r.run_status or "failed"))
        root.end(end_time=at)

    def _observe_spend(self, _options: CallbackOptions) -> list[Observation]:
        """The spend so far by model (the reader's thread: a copy of the items is taken at
        once, and a total read is one whole Decimal)."""
        return [Observation(float(total[0]), attrs) for attrs, total in list(self._spent.values())]


def _span_traceparent(span: Span) -> str | None:
    """The W3C ``traceparent`` of ``span`` (a light span writes its own)."""
    own = getattr(span, "traceparent", None)
    if own is not None:
        return str(own())
    return _traceparent(span.get_span_context())


def _traceparent(ctx: SpanContext) -> str | None:
    """The W3C ``traceparent`` of ``ctx``, as the W3C propagator writes it."""
    if ctx == INVALID_SPAN_CONTEXT:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def _messages(role: str, content: str) -> str:
    """``gen_ai.input.messages`` / ``gen_ai.output.messages`` as the conventions define them
    (a JSON array of messages with text parts), redacted."""
    doc = [{"role": role, "parts": [{"type": "text", "content": content}]}]
    return redact(json.dumps(doc, ensure_ascii=False))
