"""Regression tests of issue 9's command-line defects, end to end: batch duplicate ids and
undecodable lines, the key echoed by a server, the key hint after 401/403, bad chat lines, and
the input checks on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ..store.conftest import PG_URL, postgres_available
from .conftest import FAST, Cli, Result, SimThread

pytestmark = pytest.mark.e2e

PLAIN_KEY = "proxy-token-0123456789abcdef"  # not shaped like sk-or-…


def _clean(res: Result) -> None:
    assert "internal error" not in res.stderr
    assert "Traceback" not in res.stderr


def _run_bytes(cli: Cli, args: list[str], stdin: bytes) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "demiarch_flow", *args],
        input=stdin, capture_output=True, env=cli.env, timeout=60, check=False,
    )  # fmt: skip
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def test_batch_duplicate_ids_are_bad_lines(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """Six duplicates (explicit ids and line-number ids, either order): each later one is a bad
    line naming the first, every other line runs and is saved, exit 1 at the end."""
    sim = simulator("")
    lines = [
        {"id": "x", "message": "1"},  # 1
        {"message": "2"},  # 2: id "2"
        {"id": "x", "message": "3"},  # 3: dup of line 1
        {"id": "2", "message": "4"},  # 4: dup of line 2's default id
        {"id": "7", "message": "5"},  # 5: claims line 7's default id first
        {"id": 1, "message": "6"},  # 6: id "1", unused so far
        {"message": "7"},  # 7: id "7" is taken by line 5
        {"id": "x", "message": "8"},  # 8
        {"id": "1", "message": "9"},  # 9: dup of line 6 ("1" as text)
        {"id": "y", "message": "10"},  # 10
        {"id": "y", "message": "11"},  # 11
    ]
    inp = cli.home / "in.jsonl"
    inp.write_text("".join(json.dumps(d) + "\n" for d in lines))
    res = cli("batch", str(inp), FAST, "--concurrency", "4", "--base-url", sim.url)
    _clean(res)
    assert res.code == 1
    for line, used, first in [(3, "x", 1), (4, "2", 2), (7, "7", 5), (8, "x", 1), (9, "1", 6),
                              (11, "y", 10)]:  # fmt: skip
        assert f"in.jsonl:{line}: skipped: id '{used}' already used by line {first}" in res.stderr
    out = {o["id"]: o for o in map(json.loads, res.stdout.splitlines())}
    assert sorted(out) == ["1", "2", "7", "x", "y"]
    assert [out[i]["line"] for i in ("x", "2", "7", "1", "y")] == [1, 2, 5, 6, 10]
    assert all(o["status"] == "succeeded" for o in out.values())
    assert sim.sim.chat_requests == 5
    assert cli.rows("select status, count(*) from workflow_runs group by status") == [
        ("succeeded", 5)
    ]
    assert cli.rows("select count(*) from llm_usage") == [(5,)]


def test_batch_undecodable_lines_are_bad_lines(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """A lone surrogate escape, a non-UTF-8 byte and a NUL spoil their own line only."""
    sim = simulator("")
    inp = cli.home / "in.jsonl"
    inp.write_bytes(
        b'{"id": "a", "message": "fine"}\n'
        b'{"id": "b", "message": "\\ud800"}\n'
        b'{"id": "c", "message": "caf\xe9"}\n'
        b'{"id": "d", "message": "nul \\u0000"}\n'
        b'{"id": "e", "message": "fine too"}\n'
    )
    res = cli("batch", str(inp), FAST, "--base-url", sim.url)
    _clean(res)
    assert res.code == 1
    assert "in.jsonl:2: skipped: 'message' cannot be used: it is not valid UTF-8" in res.stderr
    assert "in.jsonl:3: skipped: the line is not valid UTF-8 (byte 27" in res.stderr
    assert "in.jsonl:4: skipped: 'message' cannot be used: it contains a NUL" in res.stderr
    assert sorted(json.loads(line)["id"] for line in res.stdout.splitlines()) == ["a", "e"]
    assert sim.sim.chat_requests == 2
    assert cli.rows("select count(*) from workflow_runs where status = 'succeeded'") == [(2,)]


class _EchoKey(BaseHTTPRequestHandler):
    """A server that echoes the bearer token in its 401 body, as some proxies do."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        body = json.dumps({"error": {"code": 401, "message": f"key {token} is not valid"}})
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoKey)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_echoed_key_of_any_shape_is_redacted(
    cli: Cli, echo_server: str, json_flag: list[str]
) -> None:
    """A key not shaped like sk-or-… echoed by the server reaches neither the output nor any
    table (workflow_runs.error_message above all); the failure ends with the key hint."""
    res = cli("run", FAST, "-m", "hi", *json_flag, "--base-url", echo_server,
              env={"OPENROUTER_API_KEY": PLAIN_KEY})  # fmt: skip
    _clean(res)
    assert res.code == 1
    assert PLAIN_KEY not in res.stdout + res.stderr
    assert "key status" in res.stderr
    messages = cli.rows("select error_message from workflow_runs")
    assert messages and "[redacted]" in messages[0][0]
    import sqlite3

    with sqlite3.connect(cli.db_path) as conn:
        dump = "\n".join(conn.iterdump())
    assert "is not valid" in dump
    assert PLAIN_KEY not in dump


@pytest.mark.parametrize(("script", "json_flag"), [("*=403*", []), ("*=403*", ["--json"]),
                                                   ("*=401", ["--json"])])  # fmt: skip
def test_401_and_403_end_with_the_key_hint(
    cli: Cli, simulator: Callable[[str], SimThread], script: str, json_flag: list[str]
) -> None:
    """With or without --json, a run refused with 401 or 403 tells the user to check the key."""
    sim = simulator(script)
    res = cli("run", FAST, "-m", "hi", *json_flag, "--base-url", sim.url)
    _clean(res)
    assert res.code == 1
    last = res.stderr.strip().splitlines()[-1]
    assert "check the key: `demiarch-flow key status`" in last
    if json_flag:
        assert json.loads(res.stdout)["status"] == "failed"


def test_chat_bad_lines_get_a_message_and_the_session_goes_on(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """A non-UTF-8 line and a NUL in chat: a message each, nothing sent, the next line runs."""
    sim = simulator("")
    res = _run_bytes(cli, ["chat", FAST, "--base-url", sim.url],
                     b"caf\xe9\nnul \x00 here\nhello\r\n/exit\n")  # fmt: skip
    _clean(res)
    assert res.code == 0
    assert "that line is not valid UTF-8 (byte 3: b'\\xe9'); nothing was sent" in res.stderr
    assert "that line cannot be used: it contains a NUL character" in res.stderr
    assert sim.sim.chat_requests == 1
    assert [m["content"] for m in sim.sim.last_messages] == ["hello"]
    assert res.stdout.count("You said: hello") == 1


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("args", "stdin", "problem"),
    [
        (["run", FAST], b"nul \x00 here", "NUL character"),
        (["run", FAST], b"caf\xe9", "not valid UTF-8"),
        (["run", FAST, "-m", "hi", "--model", "m" * 201], b"", "(at most 200)"),
    ],
)
def test_postgres_gets_the_same_input_errors(
    cli: Cli, simulator: Callable[[str], SimThread], args: list[str], stdin: bytes, problem: str
) -> None:
    """On PostgreSQL too: exit 2 before any request, nothing written."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    sim = simulator("")
    res = _run_bytes(cli, [*args, "--db", PG_URL, "--base-url", sim.url], stdin)
    _clean(res)
    assert res.code == 2, res.stderr
    assert problem in res.stderr
    assert sim.sim.chat_requests == 0


@pytest.mark.postgres
def test_postgres_stores_a_200_character_model_name(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """The limit is the columns' size: a 200-character model name runs and is saved."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    sim = simulator("")
    model = "m" * 200
    res = cli("run", FAST, "-m", "hi", "--model", model, "--json", "--db", PG_URL,
              "--base-url", sim.url)  # fmt: skip
    _clean(res)
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["model"] == model
    assert sim.sim.models_seen == [model]
