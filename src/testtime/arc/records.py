"""The schema of an `arc solve` task record (`RUN/tasks/ID.json`): what every reader may rely on.

A record that parses but does not fit (a field missing or of another type) is never read: a
rerun recomputes its task with a warning naming the file, and `arc report` lists it unreadable.
Light on purpose (no numpy, no torch): the report imports it.

    problems = record_problems(record)      # [] for a record every reader can index without a guard
"""

from __future__ import annotations

from typing import Any

from testtime.schema import Maybe, Number, OneOf, mismatches

GRID = [[int]]
CORRECT = {"attempt_1": bool, "any_attempt": bool, "oracle": bool}
TRUTH = {"bits_per_token_before": Maybe(Number), "bits_per_token_after": Maybe(Number),
         "bits_per_cell_before": Maybe(Number), "bits_per_cell_after": Maybe(Number), "rank": Maybe(int)}
CANDIDATE = {"grid": GRID, "votes?": int, "groups?": int, "identity?": int, "logprob?": Maybe(Number),
             "token_logprob?": Maybe(Number), "transforms?": [str], "poe?": Maybe(Number)}
TEST = {"attempts": [GRID], "candidates": [CANDIDATE], "selection?": [int], "predictions?": [dict],
        "prompts?": int, "unparsed?": int, "unfit?": int, "correct?": CORRECT, "truth?": TRUTH,
        "fallback?": OneOf("greedy", "input"), "padded?": int}
TTT = {"enabled": bool, "shared": bool, "sequences?": int, "fits?": bool, "steps?": int, "tokens?": int,
       "seconds?": Number, "data_seconds?": Number, "tokens_per_s?": Number, "first_loss?": Maybe(Number),
       "final_loss?": Maybe(Number), "losses?": [Number]}
PREDICT = {"seconds": Number, "prompts": int, "unparsed": int, "unfit": int}

PATH = OneOf("full", "fallback")
"""What made a record's attempts: the full path (TTT, augmented inference, vote) or the fallback (`arc.fallback`);
absent in records written before there was a fallback (all full)."""
CUT = {"at": str, "seconds": Number}
"""On a fallback record: where the deadline cut the task's full path, and after how long."""

OK_RECORD = {"task_id": str, "status": OneOf("ok"), "path?": PATH, "fits": bool, "ttt": TTT, "predict": PREDICT,
             "tests": [TEST], "seconds": Number, "cut?": CUT}
FAILED_RECORD = {"task_id": str, "status": OneOf("failed"), "path?": PATH, "error": str, "traceback": str,
                 "tests": [TEST], "seconds": Number}


def record_problems(record: Any) -> list[str]:
    """Why `record` is not a whole task record (at most 3 lines), or [] when it is."""
    if isinstance(record, dict) and record.get("status") == "ok":
        problems = mismatches(record, OK_RECORD)
    else:
        problems = mismatches(record, FAILED_RECORD)
    if not problems:
        for i, test in enumerate(record["tests"]):
            if not all(_rectangular(g) for g in test["attempts"] + [c["grid"] for c in test["candidates"]]):
                problems.append(f"record.tests[{i}]: a grid is empty or ragged")
    return problems


def _rectangular(grid: list[list[int]]) -> bool:
    return bool(grid) and bool(grid[0]) and all(len(row) == len(grid[0]) for row in grid)
