"""The `testtime` command line driven in-process, for every test that runs it (tests/ is on sys.path).

    from cli_helpers import flat, invoke
    result = invoke("arc", "solve", tasks_dir, "--out", out, faults=faults(raise_on=["t1"]))
    assert result.exit_code == 0 and "1 failed" in flat(result)
"""

from __future__ import annotations

from typer.testing import CliRunner, Result

from faults import Faults, injected
from testtime.cli import app


def invoke(*args: object, faults: Faults | None = None, columns: int = 200, **env: str) -> Result:
    """`testtime ARGS` (each made a string) on a `columns`-wide console with `env` set, and `faults`
    injected into every executor it runs. The outcome of a command is an exit code and its message:
    an exception escaping it, or a traceback in its output, fails the test."""
    with injected(faults):
        result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns), **env})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{type(result.exception).__name__}: {result.exception}\n{result.output}") \
            from result.exception
    assert "Traceback" not in result.output, result.output
    return result


def flat(result: Result) -> str:
    """The output with every run of whitespace made one space (rich wraps lines to the console)."""
    return " ".join(result.output.split())
