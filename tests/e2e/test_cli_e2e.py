"""The real CLI as a subprocess against the bundled simulator over loopback HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import FAST, KEY, Cli, SimThread

pytestmark = pytest.mark.e2e

SONNET, HAIKU, GPT4O = "anthropic/claude-sonnet-4", "anthropic/claude-3.5-haiku", "openai/gpt-4o"
JSON_KEYS = {
    "run_id", "conversation_id", "status", "final_state", "model", "content", "prompt_tokens",
    "completion_tokens", "cost_usd", "cost_source", "attempts", "transitions", "error_class",
    "error_message",
}  # fmt: skip


def test_success_prints_the_reply_and_writes_rows(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """A plain run: reply on stdout, new conversation id on stderr, rows in the database."""
    sim = simulator("")
    res = cli("run", FAST, "-m", "Hello there", "--base-url", sim.url)
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == f"[simulated {SONNET}] You said: Hello there"
    assert "conversation: " in res.stderr
    assert cli.rows("select role from chat_messages order by created_at") == [
        ("user",),
        ("assistant",),
    ]
    assert cli.rows("select model, cost_source from llm_usage") == [(SONNET, "provider")]
    assert cli.rows("select status, current_state from workflow_runs") == [("succeeded", "Done")]
    assert sim.sim.last_headers["x-openrouter-title"] == "demiarch-flow"


def test_attribution_headers_are_configurable(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """DEMIARCH_FLOW_APP_URL / _TITLE set the HTTP-Referer and X-OpenRouter-Title headers."""
    sim = simulator("")
    env = {
        "DEMIARCH_FLOW_APP_URL": "https://demiarch.example",
        "DEMIARCH_FLOW_APP_TITLE": "Demiarch",
    }
    assert cli("run", FAST, "-m", "hi", "--base-url", sim.url, env=env).code == 0
    assert sim.sim.last_headers["http-referer"] == "https://demiarch.example"
    assert sim.sim.last_headers["x-openrouter-title"] == "Demiarch"


def test_json_output_has_the_documented_fields(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """--json prints one object with every documented field."""
    sim = simulator("")
    res = cli("run", FAST, "-m", "hi", "--json", "--base-url", sim.url)
    doc = res.json()
    assert set(doc) == JSON_KEYS
    assert doc["status"] == "succeeded"
    assert doc["final_state"] == "Done"
    assert doc["attempts"] == [
        {
            "model": SONNET,
            "outcome": "ok",
            "error_class": None,
            "status": 200,
            "wait_s": None,
            "latency_ms": doc["attempts"][0]["latency_ms"],
            "partial_chars": None,
            "first_token_ms": None,  # fast.yaml does not stream
            "error_message": None,
        }
    ]
    assert [t["event"] for t in doc["transitions"]] == ["loaded", "succeeded", "saved"]
    assert doc["cost_usd"] is not None


def test_message_from_stdin(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """Without -m the message is read from stdin."""
    sim = simulator("")
    res = cli("run", FAST, "--base-url", sim.url, stdin="piped question\n")
    assert res.code == 0
    assert "piped question" in res.stdout


def test_retry_then_success(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """500 then ok: two requests, progress shows the wait, the run succeeds."""
    sim = simulator(f"{SONNET}=500,ok")
    res = cli("run", FAST, "-m", "hi", "--base-url", sim.url)
    assert res.code == 0, res.stderr
    assert sim.sim.models_seen == [SONNET, SONNET]
    assert "HTTP 500 server_error" in res.stderr
    assert "waiting 0.0 s before attempt 2" in res.stderr


def test_runs_show_json_names_every_field_and_the_wait_source(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """runs show --json: the run's fields and each transition's, the wait's source included."""
    sim = simulator(f"{SONNET}=500,ok")
    run = cli("run", FAST, "-m", "hi", "--json", "--base-url", sim.url).json()
    doc = cli("runs", "show", run["run_id"], "--json").json()
    assert set(doc) == {
        "run_id", "workflow", "workflow_sha256", "conversation_id", "status", "current_state",
        "model", "error_class", "error_message", "started_at", "finished_at", "events",
        "attempts",
    }  # fmt: skip
    assert (doc["run_id"], doc["status"], doc["workflow"]) == (
        run["run_id"],
        "succeeded",
        "chat-fast",
    )
    events = doc["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert set(events[0]) == {
        "seq", "from", "event", "to", "model", "attempt", "error_class", "wait_s",
        "wait_source", "at",
    }  # fmt: skip
    retry = next(e for e in events if e["event"] == "retry")
    assert (retry["wait_source"], retry["wait_s"] is not None) == ("backoff", True)
    assert events[0]["wait_source"] is None


def test_fallback_to_second_model(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """404 on the first model: the second answers; the warning names both."""
    sim = simulator(f"{SONNET}=404")
    res = cli("run", FAST, "-m", "hi", "--json", "--base-url", sim.url)
    assert res.code == 0
    assert res.json()["model"] == HAIKU
    assert sim.sim.models_seen == [SONNET, HAIKU]
    assert f"falling back from {SONNET} to {HAIKU}" in res.stderr


def test_all_models_failing(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """503 everywhere: exit 1, the user message kept, no usage row, a failed run row."""
    sim = simulator("*=503*")
    res = cli("run", FAST, "-m", "keep me", "--base-url", sim.url)
    assert res.code == 1
    assert "all models failed" in res.stderr
    assert len(sim.sim.models_seen) == 12
    assert cli.rows("select role, content from chat_messages") == [("user", "keep me")]
    assert cli.rows("select count(*) from llm_usage") == [(0,)]
    assert cli.rows("select status, error_class from workflow_runs") == [
        ("failed", "all_models_failed")
    ]
    assert "Traceback" not in res.stderr


def test_failed_run_json(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """--json for a failed run: same fields, status failed, error class and message."""
    sim = simulator(f"{SONNET}=401")
    res = cli("run", FAST, "-m", "hi", "--json", "--base-url", sim.url)
    assert res.code == 1
    doc = res.json()
    assert set(doc) == JSON_KEYS
    assert (doc["status"], doc["error_class"]) == ("failed", "auth")
    assert doc["content"] is None


def test_401_is_one_request_and_exit_1(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """401: exactly one request, exit 1, a message about the key — which is never printed."""
    sim = simulator(f"{SONNET}=401")
    res = cli("--debug", "run", FAST, "-m", "hi", "--base-url", sim.url)
    assert res.code == 1
    assert sim.sim.chat_requests == 1
    assert "key status" in res.stderr
    assert KEY not in res.stderr + res.stdout


def test_no_key_exit_3_and_no_request(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """No variable and no usable keyring: exit 3, says how to fix it, no request made."""
    sim = simulator("")
    res = cli("run", FAST, "-m", "hi", "--base-url", sim.url, env={"OPENROUTER_API_KEY": ""})
    assert res.code == 3
    assert "OPENROUTER_API_KEY" in res.stderr
    assert sim.sim.chat_requests == 0
    assert "Traceback" not in res.stderr


def test_invalid_workflow_exit_2_with_location(cli: Cli) -> None:
    """A broken workflow: exit 2, file:line:column in one paragraph, no traceback."""
    bad = cli.home / "bad.yaml"
    bad.write_text(Path(FAST).read_text().replace("backoff_rate: 2", "backoff_rate: 0.5"))
    res = cli("run", str(bad), "-m", "hi")
    assert res.code == 2
    assert f"{bad}:21:17: retry.backoff_rate: 0.5 is less than the minimum of 1" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("args", "code", "text"),
    [
        (["run", "missing.yaml", "-m", "hi"], 2, "missing.yaml: no such workflow file"),
        (["run", FAST, "-m", "   "], 2, "the message is empty"),
        (["run", FAST, "-m", "hi", "--db", "nosuchdb://x"], 3, "cannot open database"),
        (["run", FAST, "-m", "hi", "--db", "not a url"], 3, "is not a database URL"),
        (["run", FAST, "--bogus"], 2, "unrecognized arguments"),
        (["history", "--conversation", "nope"], 3, "no database at"),
        (["batch", "missing.jsonl"], 2, "missing.jsonl: no such input file"),
        (["batch", FAST, "--db", "nosuchdb://x"], 3, "cannot open database"),
    ],
)
def test_bad_input_gets_a_clear_message(cli: Cli, args: list[str], code: int, text: str) -> None:
    """Each mistake a new user makes: the right exit code and a message saying what to do."""
    res = cli(*args)
    assert res.code == code, res.stderr
    assert text in res.stderr
    assert "Traceback" not in res.stderr


def test_unreachable_base_url(cli: Cli) -> None:
    """Nothing listening at the base URL: network errors, retried per policy for the first
    model, then the run fails naming the host — no walk down a chain behind the same host."""
    res = cli("run", FAST, "-m", "hi", "--json", "--base-url", "http://127.0.0.1:9/api/v1")
    assert res.code == 1
    doc = res.json()
    assert doc["error_class"] == "network_error"
    assert "cannot reach 127.0.0.1" in res.stderr + json.dumps(doc)
    assert {a["error_class"] for a in doc["attempts"]} == {"network_error"}
    assert len({a["model"] for a in doc["attempts"]}) == 1


def test_unknown_conversation_exit_2(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """--conversation with an unknown id: exit 2 (an unknown id is an input error), no request."""
    sim = simulator("")
    res = cli("run", FAST, "-m", "hi", "--conversation", "does-not-exist", "--base-url", sim.url)
    assert res.code == 2
    assert "no conversation with id 'does-not-exist'" in res.stderr
    assert sim.sim.chat_requests == 0


def test_second_turn_carries_context_and_reports_show_it(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """Turn 2 sends turn 1 as context; history, runs show and usage show what was written."""
    sim = simulator("")
    first = cli("run", FAST, "-m", "first", "--json", "--base-url", sim.url).json()
    second = cli(
        "run",
        FAST,
        "-m",
        "second",
        "--json",
        "--conversation",
        first["conversation_id"],
        "--base-url",
        sim.url,
    ).json()
    assert second["conversation_id"] == first["conversation_id"]
    assert [m["content"] for m in sim.sim.last_messages] == ["first", first["content"], "second"]

    hist = cli("history", "--conversation", first["conversation_id"])
    assert hist.code == 0
    assert hist.stdout.index("first") < hist.stdout.index("second")
    listing = cli("history")
    assert first["conversation_id"] in listing.stdout
    assert " 4 " in listing.stdout

    usage = cli("usage", "--by", "model", "--json").json()
    assert usage["rows"][0]["key"] == SONNET
    assert usage["rows"][0]["calls"] == 2
    table = cli("usage", "--by", "day")
    assert "total" in table.stdout

    journal = cli("runs", "show", second["run_id"])
    assert journal.code == 0
    assert "LoadContext" in journal.stdout
    assert "saved" in journal.stdout


def test_simulate_and_validate_and_graph(cli: Cli) -> None:
    """simulate prints a virtual timeline; validate and graph work on the same file."""
    res = cli("simulate", "--faults", f"{SONNET}=429,500,500,500;{HAIKU}=ok")
    assert res.code == 0
    assert (
        "t=    7.0s  Fallback  anthropic/claude-sonnet-4 → anthropic/claude-3.5-haiku" in res.stdout
    )
    assert "7.0 s a real run would have taken" in res.stdout
    assert cli("validate", FAST).code == 0
    assert cli("graph", FAST, "--format", "dot").stdout.startswith('digraph "chat-fast"')


def test_help_lists_every_command(cli: Cli) -> None:
    """--help names all commands."""
    res = cli("--help")
    for command in (
        "run",
        "chat",
        "validate",
        "graph",
        "simulate",
        "demo",
        "history",
        "runs",
        "usage",
        "key",
        "models",
    ):
        assert command in res.stdout
    assert cli("--version").stdout.startswith("demiarch-flow ")


def test_chat_loop(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """chat: two turns on one conversation, /exit leaves."""
    sim = simulator("")
    res = cli("chat", FAST, "--base-url", sim.url, stdin="one\ntwo\n/exit\n")
    assert res.code == 0, res.stderr
    assert res.stdout.count(f"{SONNET}> ") == 2
    assert len(sim.sim.last_messages) == 3


def test_key_status_without_key(cli: Cli) -> None:
    """key status says there is no key (exit 3) and never prints one."""
    res = cli("key", "status", env={"OPENROUTER_API_KEY": ""})
    assert res.code == 3
    assert "OPENROUTER_API_KEY" in res.stdout
    ok = cli("key", "status")
    assert ok.code == 0
    assert "environment variable" in ok.stdout
    assert KEY not in ok.stdout


def test_models_sync(cli: Cli, simulator: Callable[[str], SimThread]) -> None:
    """models sync writes the price table from the simulator's /models."""
    sim = simulator("")
    res = cli("models", "sync", "--base-url", sim.url, "--force")
    assert res.code == 0, res.stderr
    assert (cli.home / "prices.json").is_file()
    assert "wrote prices of 3 models" in res.stdout


def test_demo_runs(cli: Cli) -> None:
    """demo: the main job works with no key and no network."""
    res = cli("demo", env={"OPENROUTER_API_KEY": ""})
    assert res.code == 0, res.stderr
    assert "SIMULATION" in res.stdout
    assert "falling back from anthropic/claude-sonnet-4 to anthropic/claude-3.5-haiku" in res.stdout
    assert "total" in res.stdout
    # it ends with the next commands, against the database it kept, and they work
    nexts = [ln.split()[1:] for ln in res.stdout.splitlines() if ln.startswith("  demiarch-flow ")]
    assert [n[0] for n in nexts] == ["history", "usage", "runs", "runs"]
    for args in nexts[:3]:
        after = cli(*args)
        assert after.code == 0, after.stderr
    runs = cli(*nexts[2], "--json").json()
    assert len(runs) == 2 and all(r["status"] == "succeeded" for r in runs)


def test_ctrl_c_during_a_run_records_it_cancelled(
    cli: Cli, simulator: Callable[[str], SimThread]
) -> None:
    """Ctrl-C while the provider hangs: exit 130, the run recorded as cancelled, the message kept."""
    import signal
    import subprocess
    import sys
    import time

    sim = simulator("*=hang*")
    proc = subprocess.Popen(
        [sys.executable, "-m", "demiarch_flow", "run", FAST, "-m", "wait for it", "--base-url", sim.url],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while sim.sim.chat_requests < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    assert cli.rows("select status, current_state from workflow_runs") == [("cancelled", "Request")]
    assert cli.rows("select role, content from chat_messages") == [("user", "wait for it")]
    assert cli.rows("select event from run_events order by seq") == [("loaded",)]
