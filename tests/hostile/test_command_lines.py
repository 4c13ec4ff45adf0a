"""The hostile command-line corpus: argv, stdin, environment and input files that a careless or
malicious user could hand the CLI, each with the exit code and stderr it must give.

Every case runs the real CLI as a subprocess, with its own data folder and its own simulator (so
that a request it must not send is counted exactly), and must never reach ``internal error`` or
a traceback, never print the API key, and, for input (2) and environment (3) errors, neither
send a request nor create the database. The cases run a few at a time in threads so that the
whole corpus stays fast; each is still reported as its own test.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..e2e.conftest import FAST, KEY, SimThread

pytestmark = pytest.mark.e2e

Arg = str | bytes  # bytes: an argv element that is not UTF-8, as a shell can pass
LONG_MODEL = "m" * 201
BAD_KEY_NEWLINE = "sk-or-bad\nkey-0123456789"
BAD_KEY_ASCII = "sk-or-clé-0123456789"


@dataclass(frozen=True)
class Case:
    """One hostile command line and what it must give.

    Placeholders in argv and env values: ``{fast}`` the test workflow, ``{home}`` the case's
    data folder (where ``files`` are written), ``{url}`` and ``{port}`` its simulator.
    """

    id: str
    argv: tuple[Arg, ...]
    code: int
    stderr: str = ""
    """A fragment the error output must contain."""
    stdin: bytes | None = None
    """``None``: stdin is /dev/null."""
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)
    script: str = ""
    """The simulator's fault script."""
    requests: int | None = None
    """Chat requests the simulator must see; default 0 for exit codes 2 and 3."""
    secret: str = KEY
    """The key that must not appear in the output."""

    @property
    def expected_requests(self) -> int | None:
        if self.requests is not None:
            return self.requests
        return 0 if self.code in (2, 3) else None


def C(id: str, *argv: Arg, code: int, stderr: str = "", **kw: object) -> Case:
    return Case(id, argv, code, stderr, **kw)  # type: ignore[arg-type]


def _garbage() -> bytes:
    return random.Random(9).randbytes(4000)


def _jsonl(*lines: str) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


CASES = [
    # ---- run: the message
    C("run-empty-m", "run", "{fast}", "-m", "", code=2, stderr="the message is empty"),
    C("run-devnull-stdin", "run", "{fast}", code=2, stderr="the message is empty"),
    C("run-m-not-utf8", "run", "{fast}", "-m", b"caf\xe9", code=2, stderr="not valid UTF-8"),
    C("run-stdin-not-utf8", "run", "{fast}", stdin=b"caf\xe9", code=2,
      stderr="the message on stdin is not valid UTF-8 (byte 3"),
    C("run-stdin-nul", "run", "{fast}", stdin=b"a\x00b", code=2, stderr="NUL character"),
    C("run-stdin-1mb", "run", "{fast}", "--quiet", stdin=b"x" * 1_000_000, code=0, requests=1),
    C("run-m-100k", "run", "{fast}", "--quiet", "-m", "y" * 100_000, code=0, requests=1),
    C("run-m-unicode-and-escapes", "run", "{fast}", "-m", "é😀\u202e\u0301 \x1b[31mred\x07",
      code=0, requests=1),
    # ---- run: model and conversation
    C("run-model-201", "run", "{fast}", "-m", "hi", "--model", LONG_MODEL, code=2,
      stderr="(at most 200)"),
    C("run-model-200", "run", "{fast}", "-m", "hi", "--model", "m" * 200, code=0, requests=1),
    C("run-model-newline", "run", "{fast}", "-m", "hi", "--model", "a/b\n", code=2,
      stderr="leading or trailing whitespace"),
    C("run-model-not-utf8", "run", "{fast}", "-m", "hi", "--model", b"a/\xff", code=2,
      stderr="not valid UTF-8"),
    C("run-conversation-unknown", "run", "{fast}", "-m", "hi", "--conversation", "nope", code=2,
      stderr="no conversation with id 'nope'", requests=0),
    C("run-conversation-sql", "run", "{fast}", "-m", "hi", "--conversation",
      "'; drop table chat_messages; --", code=2, stderr="no conversation", requests=0),
    C("run-conversation-5000", "run", "{fast}", "-m", "hi", "--conversation", "c" * 5000,
      code=2, stderr="no conversation", requests=0),
    C("run-conversation-empty", "run", "{fast}", "-m", "hi", "--conversation", "", code=2,
      stderr="--conversation is empty"),
    C("run-conversation-not-utf8", "run", "{fast}", "-m", "hi", "--conversation", b"\xff",
      code=2, stderr="--conversation: it is not valid UTF-8"),
    # ---- run: base URL, key, database, workflow
    C("run-base-ftp", "run", "{fast}", "-m", "hi", "--base-url", "ftp://x/api", code=2,
      stderr="only http:// and https://"),
    C("run-base-bad-ipv6", "run", "{fast}", "-m", "hi", "--base-url", "http://[::1/api",
      code=2, stderr="is not a valid URL"),
    C("run-base-env-junk", "run", "{fast}", "-m", "hi", code=2,
      env={"OPENROUTER_BASE_URL": "not a url"}, stderr="OPENROUTER_BASE_URL 'not a url'"),
    C("run-key-newline", "run", "{fast}", "-m", "hi", code=3, secret=BAD_KEY_NEWLINE,
      env={"OPENROUTER_API_KEY": BAD_KEY_NEWLINE},
      stderr="the API key contains characters that cannot be sent in an HTTP header"),
    C("run-key-non-ascii", "run", "{fast}", "-m", "hi", code=3, secret=BAD_KEY_ASCII,
      env={"OPENROUTER_API_KEY": BAD_KEY_ASCII},
      stderr="the API key contains characters that cannot be sent in an HTTP header"),
    C("run-workflow-is-dir", "run", "{home}", "-m", "hi", code=2,
      stderr="cannot read the workflow file"),
    C("run-401-json", "run", "{fast}", "-m", "hi", "--json", script="*=401", code=1,
      requests=1, stderr="`demiarch-flow key status`"),
    C("run-403", "run", "{fast}", "-m", "hi", script="*=403*", code=1,
      stderr="`demiarch-flow key status`"),
    C("no-command", code=2, stderr="usage:"),
    C("run-unknown-flag", "run", "--bogus", code=2, stderr="unrecognized arguments"),
    # ---- chat
    C("chat-devnull", "chat", "{fast}", code=0, requests=0),
    C("chat-bad-lines", "chat", "{fast}", stdin=b"caf\xe9\nnul\x00\nhello\n/exit\n", code=0,
      requests=1, stderr="that line is not valid UTF-8"),
    C("chat-model-201", "chat", "{fast}", "--model", LONG_MODEL, code=2,
      stderr="(at most 200)"),
    # ---- batch
    C("batch-empty-file", "batch", "{home}/in.jsonl", "{fast}", files={"in.jsonl": b""},
      code=0, requests=0),
    C("batch-input-is-dir", "batch", "{home}", "{fast}", code=2, stderr="is a folder"),
    C("batch-garbage-bytes", "batch", "{home}/in.jsonl", "{fast}",
      files={"in.jsonl": _garbage()}, code=1, requests=0, stderr="skipped"),
    C("batch-duplicate-ids", "batch", "{home}/in.jsonl", "{fast}",
      files={"in.jsonl": _jsonl('{"id":"x","message":"a"}', '{"message":"b"}',
                                '{"id":"x","message":"c"}', '{"id":2,"message":"d"}')},
      code=1, requests=2, stderr="in.jsonl:3: skipped: id 'x' already used by line 1"),
    C("batch-bad-strings", "batch", "{home}/in.jsonl", "{fast}",
      files={"in.jsonl": _jsonl('{"message":"\\ud800"}', '{"message":"a\\u0000"}',
                                '{"message":"x","model":"' + LONG_MODEL + '"}',
                                '{"message":"x","id":' + "9" * 5000 + "}",
                                "[" * 50_000, '{"message":"fine"}')},
      code=1, requests=1, stderr="in.jsonl:3: skipped: 'model' cannot be used"),
    C("batch-concurrency-0", "batch", "{home}/in.jsonl", "--concurrency", "0", code=2,
      stderr="--concurrency must be at least 1"),
    C("batch-concurrency-huge", "batch", "{home}/in.jsonl", "{fast}", "--concurrency",
      "1000000000", files={"in.jsonl": _jsonl('{"message":"a"}', '{"message":"b"}')}, code=0,
      requests=2),
    C("batch-max-in-flight-neg", "batch", "{home}/in.jsonl", "--max-in-flight", "-1", code=2,
      stderr="--max-in-flight must be at least 1"),
    C("batch-max-in-flight-huge", "batch", "{home}/in.jsonl", "{fast}", "--max-in-flight",
      "1000000", files={"in.jsonl": _jsonl('{"message":"a"}')}, code=0, requests=1),
    C("batch-out-no-dir", "batch", "{home}/in.jsonl", "{fast}", "--out", "{home}/no/such/dir/x",
      files={"in.jsonl": _jsonl('{"message":"a"}')}, code=3, stderr="cannot be written"),
    C("batch-out-is-dir", "batch", "{home}/in.jsonl", "{fast}", "--out", "{home}",
      files={"in.jsonl": _jsonl('{"message":"a"}')}, code=3, stderr="cannot be written"),
    C("batch-concurrency-text", "batch", "x.jsonl", "--concurrency", "lots", code=2,
      stderr="invalid int value"),
    # ---- simulate and simulator
    C("simulate-huge-repeat", "simulate", "--faults", "*=ok*99999999999", code=2,
      stderr="a repetition count is at most 10,000"),
    C("simulate-bad-slow", "simulate", "--faults", "*=slow:1.2.3", code=2,
      stderr="is not a number of seconds"),
    C("simulate-model-201", "simulate", "--model", LONG_MODEL, code=2,
      stderr="(at most 200)"),
    C("simulate-empty-m", "simulate", "-m", "", code=2, stderr="the message is empty"),
    C("simulator-port-range", "simulator", "--port", "99999", code=2,
      stderr="a port is a number from 1 to 65535"),
    C("simulator-port-in-use", "simulator", "--port", "{port}", code=3,
      stderr="cannot listen on 127.0.0.1"),
    C("simulator-latency-nan", "simulator", "--latency", "nan", code=2, stderr="--latency"),
    # ---- reports
    C("history-limit-0", "history", "--limit", "0", code=2, stderr="--limit must be at least 1"),
    C("history-limit-huge", "history", "--limit", "99999999999999999999", code=2,
      stderr="more than 1,000,000,000"),
    C("history-conversation-not-utf8", "history", "--conversation", b"\xff", code=2,
      stderr="not valid UTF-8"),
    C("usage-since-garbage", "usage", "--since", "garbage", code=2, stderr="is not a date"),
    C("runs-show-not-utf8", "runs", "show", b"\xff", code=2, stderr="not valid UTF-8"),
    # ---- keys and models
    C("models-sync-ftp", "models", "sync", "--base-url", "ftp://x/api", code=2,
      stderr="only http:// and https://"),
    C("models-sync-key-newline", "models", "sync", code=3, secret=BAD_KEY_NEWLINE,
      env={"OPENROUTER_API_KEY": BAD_KEY_NEWLINE}, stderr="cannot be sent in an HTTP header"),
    C("key-set-not-utf8", "key", "set", stdin=b"sk-or-a\xffb-0123456789\n", code=3,
      env={"LC_ALL": "C.UTF-8"}, secret="sk-or-a", stderr="cannot be sent in an HTTP header"),
    C("key-status-newline", "key", "status", code=3, secret=BAD_KEY_NEWLINE,
      env={"OPENROUTER_API_KEY": BAD_KEY_NEWLINE}),
]  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    requests: int
    db_created: bool


def _fill(value: Arg, home: Path, sim: SimThread) -> Arg:
    if isinstance(value, bytes):
        return value
    return (
        value.replace("{fast}", FAST)
        .replace("{home}", str(home))
        .replace("{url}", sim.url)
        .replace("{port}", str(sim.port))
    )


def _run(case: Case, home: Path) -> Outcome:
    sim = SimThread(case.script)
    try:
        for name, data in case.files.items():
            (home / name).write_bytes(data)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OPENROUTER_", "DEMIARCH_FLOW_"))
        }
        env.update(
            OPENROUTER_API_KEY=KEY,
            OPENROUTER_BASE_URL=sim.url,  # a case that gets as far as a request asks the simulator
            DEMIARCH_FLOW_HOME=str(home),
            DEMIARCH_FLOW_DB=f"sqlite:///{home / 'flow.db'}",
            PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
            NO_COLOR="1",
        )
        env.update({k: str(_fill(v, home, sim)) for k, v in case.env.items()})
        proc = subprocess.run(
            [sys.executable, "-m", "demiarch_flow", *(_fill(a, home, sim) for a in case.argv)],
            input=case.stdin,
            stdin=subprocess.DEVNULL if case.stdin is None else None,
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )
        return Outcome(
            proc.returncode,
            proc.stdout.decode("utf-8", "replace"),
            proc.stderr.decode("utf-8", "replace"),
            sim.sim.chat_requests,
            (home / "flow.db").exists(),
        )
    finally:
        sim.stop()


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Outcome]]]:
    """Every selected case, started at once on a few threads (each waits on its subprocess)."""
    params = (getattr(item, "callspec", None) for item in request.session.items)
    selected = {p.params["case"].id for p in params if p and isinstance(p.params.get("case"), Case)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield {
            case.id: pool.submit(_run, case, tmp_path_factory.mktemp(case.id[:40]))
            for case in CASES
            if case.id in selected
        }


def test_case_ids_are_unique() -> None:
    """Each case is reported under its own id."""
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_command_line(case: Case, outcomes: dict[str, Future[Outcome]]) -> None:
    """The exit code and message of the case; never an internal error, a traceback or the key;
    no request and no database for input and environment errors."""
    out = outcomes[case.id].result()
    context = f"exit {out.code}\nstderr: {out.stderr[-2000:]}"
    assert out.code == case.code, context
    assert case.stderr in out.stderr, context
    assert "internal error" not in out.stderr, context
    assert "Traceback" not in out.stderr + out.stdout, context
    assert case.secret not in out.stdout + out.stderr
    if case.expected_requests is not None:
        assert out.requests == case.expected_requests, context
    if case.code in (2, 3):
        assert not out.db_created, f"the database was opened before the error\n{context}"
