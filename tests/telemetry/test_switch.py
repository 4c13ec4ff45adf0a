"""When runs are traced, and what that costs when they are not: the flag and the standard
variables decide, nothing of OpenTelemetry is imported unless a run is traced, a missing extra
is a clear environment error, and a program's own tracer provider gets the spans unasked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from demiarch_flow.telemetry import tracing_wanted


@pytest.mark.parametrize(
    ("flag", "environ", "wanted"),
    [
        (None, {}, False),
        (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        (None, {"OTEL_TRACES_EXPORTER": "console"}, True),
        (None, {"OTEL_TRACES_EXPORTER": "none"}, False),
        (None, {"OTEL_SERVICE_NAME": "svc"}, False),  # names the service, exports nothing
        (
            None,
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"},
            False,
        ),
        (True, {}, True),
        (True, {"OTEL_SDK_DISABLED": "true"}, True),
        (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
    ],
)
def test_the_flag_and_the_variables_decide(
    flag: bool | None, environ: dict[str, str], wanted: bool
) -> None:
    """--trace / --no-trace win; else an exporter variable turns tracing on and
    OTEL_SDK_DISABLED=true off."""
    assert tracing_wanted(flag, environ) is wanted


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["DEMIARCH_FLOW_HOME"] = str(tmp_path)
    env["OPENROUTER_API_KEY"] = "sk-or-test-0123456789abcdef"
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


RUN_ONE = textwrap.dedent("""
    import dataclasses, sys, trio
    from demiarch_flow.client import ApiKey
    from demiarch_flow.definition import load_workflow
    from demiarch_flow.fake import FakeOpenRouter, fake_client
    from demiarch_flow.runner import RunRequest, run_workflow
    from demiarch_flow.runtime import open_world

    async def main():
        async with open_world(
            db="sqlite:///{db}", base_url="https://openrouter.ai/api/v1",
            key=ApiKey("sk-or-test-0123456789abcdef", "test"), trace={trace},
        ) as world:
            env = dataclasses.replace(world.env, client=fake_client(FakeOpenRouter("")))
            out = await run_workflow(load_workflow("{wf}"), RunRequest("hi"), env)
            assert out.succeeded, out
    trio.run(main)
""")


def test_an_untraced_run_imports_nothing_of_opentelemetry(tmp_path: Path) -> None:
    """A whole run through the composition root, no variable and no flag: no
    ``opentelemetry`` module is loaded."""
    wf = Path(__file__).parents[2] / "workflows" / "chat.yaml"
    code = RUN_ONE.format(db=tmp_path / "f.db", trace=None, wf=wf) + textwrap.dedent("""
    import json
    print(json.dumps(sorted(m for m in sys.modules if m.startswith("opentelemetry"))))
    """)
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []


BLOCK_OTEL = textwrap.dedent("""
    import sys
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
""")


def test_without_the_extra_an_untraced_run_works_and_trace_is_an_environment_error(
    tmp_path: Path,
) -> None:
    """OpenTelemetry not installed: a run without --trace is untouched; ``run --trace`` exits
    3 with one line naming the extra, and no traceback."""
    wf = Path(__file__).parents[2] / "workflows" / "chat.yaml"
    plain = _python(BLOCK_OTEL + RUN_ONE.format(db=tmp_path / "a.db", trace=None, wf=wf), tmp_path)
    assert plain.returncode == 0, plain.stderr
    forced = _python(
        BLOCK_OTEL
        + textwrap.dedent("""
        from demiarch_flow.cli.main import main
        sys.exit(main(["run", "-m", "hi", "--trace", "--db", "sqlite:///{db}"]))
        """).format(db=tmp_path / "b.db"),
        tmp_path,
    )
    assert forced.returncode == 3, forced.stderr
    assert "pip install 'demiarch-flow[otel]'" in forced.stderr
    assert "Traceback" not in forced.stderr


def test_a_programs_own_tracer_provider_gets_the_spans_unasked(tmp_path: Path) -> None:
    """A library user sets a global SDK tracer provider and calls ``open_world`` with no
    tracing argument and no variable: the run's spans are in their exporter."""
    wf = Path(__file__).parents[2] / "workflows" / "chat.yaml"
    setup = """
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    """
    report = """
    import json
    print(json.dumps(sorted(s.name for s in exporter.get_finished_spans())))
    """
    code = (
        textwrap.dedent(setup)
        + RUN_ONE.format(db=tmp_path / "u.db", trace=None, wf=wf)
        + textwrap.dedent(report)
    )
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [
        "chat anthropic/claude-sonnet-4",
        "invoke_workflow chat",
    ]
