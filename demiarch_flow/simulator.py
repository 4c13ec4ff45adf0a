"""A small OpenRouter-compatible HTTP server for the demo, end-to-end tests and benchmarks.

It speaks HTTP/1.1 with keep-alive (trio + h11), serves ``POST …/chat/completions`` with the
real response shape (``usage.cost`` included) and ``GET …/models``, and plays a fault script
(:mod:`demiarch_flow.faults`) per model: statuses with Retry-After, HTTP-200 error bodies,
malformed bodies, delays, hangs and connection resets (``refused`` too: the connection is
already accepted when the script is read, so it is dropped as ``reset``). It listens on
127.0.0.1 only.

Run it alone with ``demiarch-flow simulator --port 8765 --faults '…'``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import h11
import trio

from .answers import GenerationLog, generation_record, stream_plan, wants_stream
from .faults import (
    STREAMED,
    Fault,
    FaultCursor,
    FaultScript,
    blocking_kind,
    models_listing,
    new_generation_id,
    over_rpm,
    render,
    stream_break,
)
from .pricing import PriceTable
from .simrate import SlidingWindowLimit

LOOPBACK = "127.0.0.1"
_MAX_BODY = 8 * 1024 * 1024


class Simulator:
    """The server's state: the fault cursor, the price table and counters.

    Args:
        script: fault script text or parsed script (empty: every request succeeds).
        latency_s: a fixed delay added to every answer (0 for benchmarks).
        require_key: answer 401 to requests without a bearer token, as OpenRouter does.
        rpm: a provider-side limit (429 past ``rpm`` requests in any 60 s), as OpenRouter's.
    """

    def __init__(
        self,
        script: str | FaultScript = "",
        *,
        prices: PriceTable | None = None,
        latency_s: float = 0.0,
        require_key: bool = True,
        rpm: int | None = None,
    ) -> None:
        parsed = FaultScript.parse(script) if isinstance(script, str) else script
        self.cursor = FaultCursor(parsed)
        self.prices = prices or PriceTable.load()
        self.latency_s = latency_s
        self.require_key = require_key
        self.rate = SlidingWindowLimit(rpm) if rpm else None
        """``rpm``: answer 429 (with Retry-After) past that many requests in any 60 s."""
        self.chat_requests = 0
        self.arrivals: list[float] = []
        """trio's clock at each chat request that was answered (not refused by ``rpm``)."""
        self.spent_usd = Decimal(0)
        """What the answers cost (``usage.cost``), as ``GET /key`` reports it."""
        self.models_seen: list[str] = []
        self.last_messages: list[Any] = []
        self.last_headers: dict[str, str] = {}
        self._models_body = json.dumps(models_listing(self.prices)).encode()
        self.generations = GenerationLog()

    async def serve(
        self, port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on 127.0.0.1:``port`` (0: any free port) until cancelled; reports the port."""
        listeners = await trio.open_tcp_listeners(port, host=LOOPBACK)
        bound = listeners[0].socket.getsockname()[1]
        task_status.started(bound)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await _read_request(stream, conn)
                if request is None:
                    return
                keep = await self._respond(stream, conn, request, body)
                if not keep or conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()

    async def _respond(
        self, stream: trio.SocketStream, conn: h11.Connection, request: h11.Request, body: bytes
    ) -> bool:
        target = request.target.decode("latin-1")
        path = target.split("?", 1)[0].rstrip("/")
        method = request.method.decode()
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        if method == "GET" and path.endswith("/models"):
            await _send(stream, conn, 200, {"Content-Type": "application/json"}, self._models_body)
            return True
        if method == "GET" and path.endswith("/generation"):
            query = target.partition("?")[2]
            ids = [v for k, _, v in (p.partition("=") for p in query.split("&")) if k == "id"]
            found = self.generations.lookup(ids[0] if ids else "")
            if found is None:
                not_found = b'{"error": {"code": 404, "message": "Generation not found"}}'
                await _send(stream, conn, 404, {"Content-Type": "application/json"}, not_found)
            else:
                await _send(
                    stream, conn, 200, {"Content-Type": "application/json"},
                    json.dumps(found).encode(),
                )  # fmt: skip
            return True
        if method == "GET" and path.endswith("/key"):
            spent = format(self.spent_usd, "f")
            usage = {"label": "simulator", "limit": None, "limit_remaining": None,
                     "usage": spent, "usage_daily": spent, "usage_monthly": spent}  # fmt: skip
            body = json.dumps({"data": usage}).encode()
            await _send(stream, conn, 200, {"Content-Type": "application/json"}, body)
            return True
        if method != "POST" or not path.endswith("/chat/completions"):
            await _send(
                stream,
                conn,
                404,
                {"Content-Type": "application/json"},
                b'{"error": {"code": 404, "message": "Not found"}}',
            )
            return True
        if self.require_key and not headers.get("authorization", "").startswith("Bearer "):
            await _send(
                stream,
                conn,
                401,
                {"Content-Type": "application/json"},
                b'{"error": {"code": 401, "message": "No auth credentials found"}}',
            )
            return True
        try:
            payload: Any = json.loads(body)
            model = str(payload["model"])
            messages = payload.get("messages") or []
        except (ValueError, KeyError, TypeError):
            await _send(
                stream,
                conn,
                400,
                {"Content-Type": "application/json"},
                b'{"error": {"code": 400, "message": "Invalid JSON body"}}',
            )
            return True
        if self.rate is not None and (wait := self.rate.admit(trio.current_time())) is not None:
            refused = over_rpm(wait)
            await _send(stream, conn, refused.status, refused.headers, refused.body)
            return True
        self.chat_requests += 1
        self.arrivals.append(trio.current_time())
        generation_id = new_generation_id()  # before any await: each answer has its own
        self.models_seen.append(model)
        self.last_messages = list(messages)
        self.last_headers = {k: v for k, v in headers.items() if k != "authorization"}
        fault = self.cursor.next(model)
        if self.latency_s:
            await trio.sleep(self.latency_s)
        if wants_stream(payload) and fault.kind in STREAMED:
            return await self._stream(stream, conn, fault, model, messages, generation_id)
        fault = dataclasses.replace(fault, kind=blocking_kind(fault))
        if fault.kind in ("reset", "refused"):  # refused: too late to refuse, see faults
            _reset(stream)
            return False
        if fault.kind == "hang":
            await trio.sleep_forever()
        if fault.kind == "slow":
            await trio.sleep(fault.delay_s)
        out = render(fault, model, messages, self.prices, generation_id, datetime.now(UTC))
        if out.status == 200:
            self.spent_usd += _billed(out.body)
        await _send(stream, conn, out.status, out.headers, out.body)
        return True

    async def _stream(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        fault: Fault,
        model: str,
        messages: list[Any],
        generation_id: str,
    ) -> bool:
        """Play a stream plan: each frame is sent as it comes (chunked encoding)."""
        if fault.kind == "slow":
            await trio.sleep(fault.delay_s)
        plan = stream_plan(
            model, messages, self.prices, generation_id, datetime.now(UTC),
            stream_break(fault), fault.count if fault.kind == "chunks" else None,
        )  # fmt: skip
        self.generations.add(
            generation_id, generation_record(model, messages, self.prices, generation_id, plan.text)
        )
        head = [("Content-Type", "text/event-stream"), ("X-Generation-Id", generation_id),
                ("Transfer-Encoding", "chunked")]  # fmt: skip
        await stream.send_all(conn.send(h11.Response(status_code=200, headers=head)) or b"")
        for frame in plan.frames:
            if frame.kind == "data":
                await stream.send_all(conn.send(h11.Data(data=frame.data)) or b"")
            elif frame.kind == "sleep":
                await trio.sleep(frame.seconds)
            elif frame.kind == "reset":
                _reset(stream)
                return False
            else:
                await trio.sleep_forever()
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        return True


def _billed(body: bytes) -> Decimal:
    """The ``usage.cost`` of a success body (0 when it has none)."""
    try:
        return Decimal(str(json.loads(body)["usage"]["cost"]))
    except (ValueError, KeyError, TypeError, ArithmeticError):
        return Decimal(0)


async def _read_request(
    stream: trio.SocketStream, conn: h11.Connection
) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    chunks: list[bytes] = []
    size = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            conn.receive_data(data)
            if not data and request is None:
                return None, b""
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > _MAX_BODY:
                return None, b""
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            return request, b"".join(chunks)
        elif isinstance(event, h11.ConnectionClosed):
            return None, b""


async def _send(
    stream: trio.SocketStream,
    conn: h11.Connection,
    status: int,
    headers: dict[str, str],
    body: bytes,
) -> None:
    pairs = [(k, v) for k, v in headers.items()]
    pairs.append(("Content-Length", str(len(body))))
    data = conn.send(h11.Response(status_code=status, headers=pairs)) or b""
    data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


def _reset(stream: trio.SocketStream) -> None:
    """Make the close a TCP reset (SO_LINGER 0), like a provider dropping the connection."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def base_url(port: int) -> str:
    """The API base a client should use for a simulator on ``port``."""
    return f"http://{LOOPBACK}:{port}/api/v1"
