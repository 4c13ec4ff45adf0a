"""A command imports only what it needs (issue 18: every command paid 0.7–0.9 s of imports
before doing anything). Each light command runs in a fresh interpreter, as the `demiarch-flow`
script would, and the modules it loaded are checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from demiarch_flow.runner import RunRequest, run_workflow
from demiarch_flow.store.schema import HEAD
from demiarch_flow.store.sql import SqlStore
from demiarch_flow.testing import FakeOpenRouter, make_env

from .store.test_contract import WF

#: What a run needs and a report or the key's status does not (each costs 0.05–0.4 s).
HEAVY = {"sqlalchemy", "alembic", "trio", "httpx", "httpcore", "statemachine", "jsonschema",
         "yaml"}  # fmt: skip


def loaded_by(argv: list[str], env: dict[str, str]) -> tuple[int, set[str]]:
    """Run ``demiarch-flow ARGV`` in a fresh interpreter; its exit code and the top-level
    packages it imported."""
    probe = (
        "import contextlib, io, json, sys\n"
        "from demiarch_flow.cli.main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        f"        code = main({argv!r})\n"
        "    except SystemExit as exc:\n"
        "        code = exc.code\n"
        "print(json.dumps([code, sorted({m.split('.')[0] for m in sys.modules})]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env,
        check=True,
    )  # fmt: skip
    code, modules = json.loads(done.stdout.splitlines()[-1])
    return code, set(modules)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small database at head, holding one run."""
    url = f"sqlite:///{tmp_path_factory.mktemp('startup') / 'flow.db'}"

    async def one() -> None:
        store = SqlStore.open_sync(url)
        try:
            await run_workflow(WF, RunRequest("hi"), make_env(FakeOpenRouter(), store=store))
        finally:
            store.close()

    trio.run(one)
    return url


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENROUTER_", "DEMIARCH"))}
    return {**clean, "DEMIARCH_FLOW_HOME": str(tmp_path), "OPENROUTER_API_KEY": "sk-or-" + "x" * 20}


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["key", "status"],
        ["key", "status", "--json"],
        ["history"],
        ["history", "--json"],
        ["usage", "--by", "day"],
        ["runs", "list"],
        ["runs", "list", "--status", "stale", "--json"],
    ],
)
def test_a_light_command_imports_nothing_heavy(
    argv: list[str], db: str, env: dict[str, str]
) -> None:
    """`--help`, `key status` (key in the environment), and `history`, `usage` and `runs list`
    on a SQLite file at head import none of SQLAlchemy, Alembic, trio, httpx,
    python-statemachine, jsonschema or PyYAML — and do their job."""
    if argv[0] in ("history", "usage", "runs"):
        argv = [*argv, "--db", db]
    code, modules = loaded_by(argv, env)
    assert code == 0
    assert not HEAVY & modules, sorted(HEAVY & modules)
    assert "keyring" not in modules  # the key came from the environment


def test_a_report_on_another_database_still_works(tmp_path: Path, env: dict[str, str]) -> None:
    """The quick path declines what it does not read (here: no file); the full store then
    answers as before (exit 3, no database) — importing SQLAlchemy only then."""
    code, modules = loaded_by(["history", "--db", f"sqlite:///{tmp_path / 'none.db'}"], env)
    assert code == 3 and "sqlalchemy" in modules


BUDGETED = """\
version: 1
name: budgeted
models: [anthropic/claude-sonnet-4]
request: {max_tokens: 64}
retry: {max_retries: 1, initial_delay_s: 1, backoff_rate: 2, max_delay_s: 5}
fallback: {when: [retries_exhausted]}
limits:
  budget: {daily_usd: 5, monthly_usd: 50}
initial: Request
states:
  Request: {action: request, transitions: {succeeded: Done, retryable: Failed, model_failed: Failed, fatal: Failed}}
  Done: {final: true}
  Failed: {final: true}
"""


@pytest.mark.parametrize("workflow", ["bundled", "budgeted"])
def test_budget_on_a_checked_workflow_imports_nothing_heavy(
    workflow: str, db: str, env: dict[str, str], tmp_path: Path
) -> None:
    """`budget` on a SQLite file at head, once its workflow has been checked (the first
    command left it in the cache), imports none of the heavy libraries — and reads the books
    and the limits as before."""
    argv = ["budget", "--db", db, "--json"]
    if workflow == "budgeted":
        path = tmp_path / "budgeted.yaml"
        path.write_text(BUDGETED, "utf-8")
        argv += ["--workflow", str(path)]
    first_code, first = loaded_by(argv, env)  # a miss: the full check, which fills the cache
    assert first_code == 0 and {"yaml", "jsonschema", "statemachine"} <= first
    code, modules = loaded_by(argv, env)
    assert code == 0
    assert not HEAVY & modules, sorted(HEAVY & modules)


def test_budget_json_is_the_same_on_a_hit(db: str, env: dict[str, str], tmp_path: Path) -> None:
    """The books and limits `budget --json` prints do not depend on the cache."""
    path = tmp_path / "budgeted.yaml"
    path.write_text(BUDGETED, "utf-8")
    argv = [sys.executable, "-m", "demiarch_flow", "budget", "--db", db, "--json",
            "--workflow", str(path)]  # fmt: skip
    miss, hit = (subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
                 for _ in range(2))  # fmt: skip
    rows = json.loads(hit.stdout)
    assert json.loads(miss.stdout) == rows
    assert [(r["window"], r["limit_usd"]) for r in rows] == [
        ("day", "5.000000000"), ("month", "50.000000000"),
    ]  # fmt: skip


def test_a_run_without_a_key_says_so_before_importing_the_engine(env: dict[str, str]) -> None:
    """`run` with no key anywhere exits 3 having imported neither the engine's libraries
    (trio, SQLAlchemy, python-statemachine) nor, on a checked workflow, the checks' ones."""
    env = {k: v for k, v in env.items() if k != "OPENROUTER_API_KEY"}
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    assert loaded_by(["run", "-m", "hi"], env)[0] == 3
    code, modules = loaded_by(["run", "-m", "hi"], env)
    assert code == 3
    assert not (HEAVY - {"httpx", "httpcore"}) & modules, sorted(HEAVY & modules)


def test_a_run_on_a_database_at_head_imports_no_sqlalchemy(db: str, env: dict[str, str]) -> None:
    """`run` of the bundled workflow (no budget, no shared bucket) against a local server,
    on a SQLite file at head, writes its rows through the store's own sqlite3 connection:
    neither SQLAlchemy nor Alembic is imported — and the run, its reply and its usage are
    stored."""
    import sqlite3

    from .e2e.conftest import SimThread

    def counts() -> list[int]:
        with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
            return [
                conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("workflow_runs", "chat_messages", "llm_usage", "run_events")
            ]

    before = counts()
    sim = SimThread("")
    try:
        argv = ["run", "-m", "hello", "--base-url", sim.url, "--db", db, "--no-stream", "--quiet"]
        code, modules = loaded_by(argv, env)
        again, modules_again = loaded_by(argv, env)
    finally:
        sim.stop()
    assert code == again == 0
    assert not {"sqlalchemy", "alembic"} & modules, sorted({"sqlalchemy", "alembic"} & modules)
    # the second run finds the bundled workflow in the cache of checked workflows, with the
    # transition table read off its class: it moves on that table, with no python-statemachine
    # (nor PyYAML, jsonschema, SQLAlchemy)
    unneeded = {"sqlalchemy", "alembic", "statemachine", "yaml", "jsonschema"}
    assert not unneeded & modules_again, sorted(HEAVY & modules_again)
    after = counts()
    assert [a - b for a, b in zip(after, before, strict=True)][:3] == [2, 4, 2]
    assert after[3] > before[3]


def test_a_run_on_a_new_database_imports_neither_sqlalchemy_nor_alembic(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """The first `run` on a SQLite file that does not exist yet (nor its folder) creates it at
    head from the generated DDL, on its own sqlite3 connection: neither SQLAlchemy nor Alembic
    is imported (they cost a new database ~1.5 s of start-up), and the run is stored."""
    import sqlite3

    from .e2e.conftest import SimThread

    path = tmp_path / "new" / "flow.db"
    sim = SimThread("")
    try:
        argv = ["run", "-m", "hello", "--base-url", sim.url, "--db", f"sqlite:///{path}",
                "--no-stream", "--quiet"]  # fmt: skip
        code, modules = loaded_by(argv, env)
    finally:
        sim.stop()
    assert code == 0
    assert not {"sqlalchemy", "alembic"} & modules, sorted({"sqlalchemy", "alembic"} & modules)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
        assert conn.execute("SELECT status FROM workflow_runs").fetchall() == [("succeeded",)]


@pytest.mark.postgres
def test_submit_batch_imports_no_runner(env: dict[str, str], tmp_path: Path) -> None:
    """`submit --batch` only queues its lines: once its workflow has been checked, it reads
    them without importing the runner (httpx, httpcore, python-statemachine: `batch`'s module
    brought them in, about a tenth of `submit`'s wall time on an idle machine) — and queues
    every line."""
    from .store.conftest import own_pg_database

    def batch(name: str, n: int) -> str:
        path = tmp_path / name
        path.write_text(
            "".join(json.dumps({"id": i, "message": f"{name} {i}"}) + "\n" for i in range(n))
        )
        return str(path)

    for url in own_pg_database("dflow_imports"):
        first = loaded_by(["submit", "--batch", batch("a.jsonl", 2), "--db", url], env)
        assert first[0] == 0  # the workflow checked (the cache filled), the queue installed
        code, modules = loaded_by(["submit", "--batch", batch("b.jsonl", 3), "--db", url], env)
        assert code == 0
        assert not {"httpx", "httpcore", "statemachine"} & modules, sorted(HEAVY & modules)
