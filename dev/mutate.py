"""Mutation check: break one core function at a time and see that the tests notice.

Each mutation replaces one exact snippet of a source file with a wrong version (votes counted
per group instead of per candidate, the score reading attempt_1 only, the loss on prompt tokens,
a wrong inverse, a stale SIFT posterior, finished items recomputed, changed settings accepted,
the shipped adapter ignored, ...) and runs the tests that should catch it. The shared working
tree is never touched: `src/` is copied to a temporary folder per mutation, the mutation is
applied there, and pytest runs with that copy first on PYTHONPATH (it checks that the copy is
what gets imported). First the selected tests run once on an unmutated copy and must pass.

    .venv/bin/python dev/mutate.py                # all mutations; exit 1 if any survives
    .venv/bin/python dev/mutate.py --list
    .venv/bin/python dev/mutate.py --only vote-groups,score-attempt-1

A mutation whose snippet is no longer in its file (the code moved on) stops the run with exit 2:
update the snippet rather than let the check silently shrink.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    """Path under src/testtime/."""
    old: str
    """An exact snippet that occurs once in the file."""
    new: str
    tests: tuple[str, ...]
    """pytest selections (paths or node ids, relative to the repository) that must catch it."""
    what: str


MUTATIONS = [
    Mutation("vote-groups", "arc/vote.py", "return -r.groups, -r.identity, -_finite(r.token_logprob), r.text",
             "return -r.votes, -r.identity, -_finite(r.token_logprob), r.text",
             ("tests/arc/test_vote.py",), "the global vote counts candidates, not the groups that keep a grid"),
    Mutation("vote-identity", "arc/vote.py", "return -r.groups, -r.identity, -_finite(r.token_logprob), r.text",
             "return -r.groups, -_finite(r.token_logprob), r.text",
             ("tests/arc/test_vote.py",), "ties are not given to the identity transform's prediction"),
    Mutation("vote-logprob", "arc/vote.py", "return -r.groups, -r.identity, -_finite(r.token_logprob), r.text",
             "return -r.groups, -r.identity, -_finite(r.logprob), r.text",
             ("tests/arc/test_vote.py",), "ties go to the higher summed (not per-token) log-probability"),
    Mutation("score-attempt-1", "arc/score.py",
             "solved += any(grids_equal(_maybe_grid(g), truth) for g in tries)",
             "solved += any(grids_equal(_maybe_grid(g), truth) for g in tries[:1])",
             ("tests/arc/test_score.py",), "only attempt_1 can solve a test output"),
    Mutation("score-mean", "arc/score.py", "mean = sum(per_task.values()) / len(per_task) if per_task else 0.0",
             "mean = solved_total / outputs_total if outputs_total else 0.0",
             ("tests/arc/test_score.py",), "the score is a mean over test outputs, not over tasks"),
    Mutation("score-missing", "arc/score.py", "missing.append(task_id)\n            guesses = []",
             "missing.append(task_id)\n            continue",
             ("tests/arc/test_score.py",), "tasks missing from the submission are left out instead of scoring 0"),
    Mutation("labels-prompt", "arc/format.py", "labels.extend(ids if loss else [IGNORE_INDEX] * len(ids))",
             "labels.extend(ids)", ("tests/arc/test_format.py",), "every token carries the loss, prompt included"),
    Mutation("labels-outputs", "arc/format.py",
             'labelled = loss_on == "outputs" and (k > 0 or first_output)',
             "labelled = False",
             ("tests/arc/test_format.py",), 'loss_on="outputs" labels no demonstration output'),
    Mutation("ttt-first-output", "arc/ttt_data.py", "first_output=False)", "first_output=True)",
             ("tests/arc/test_ttt_data.py",), "TTT with --loss-on outputs also labels the first demo's output"),
    Mutation("padding-labelled", "batching.py",
             "labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)",
             "labels = torch.full((len(batch), width), pad_id, dtype=torch.long)",
             ("tests/test_finetune.py::test_padded_batch_matches_single_sequences",),
             "padding tokens carry the loss (labels padded with the pad id)"),
    Mutation("inverse-rotation", "arc/transforms.py",
             "return Geometric(_BY_ELEMENT[(k if reflect else -k % 4, reflect)])",
             "return Geometric(_BY_ELEMENT[(k, reflect)])",
             ("tests/arc/test_transforms.py",), "a rotation is its own inverse"),
    Mutation("inverse-colors", "arc/transforms.py", "inv[new] = c", "inv[c] = new",
             ("tests/arc/test_transforms.py",), "a colour permutation's inverse is itself"),
    Mutation("inverse-compose", "arc/transforms.py", "return Compose(tuple(p.inverse() for p in reversed(self.parts)))",
             "return Compose(tuple(p.inverse() for p in self.parts))",
             ("tests/arc/test_transforms.py",), "a composition is undone in the order it was applied"),
    Mutation("sift-stale-posterior", "lm/select.py", "self.c -= u * u_q", "self.c -= 0.0 * u * u_q",
             ("tests/lm/test_select.py",), "SIFT's rank-one update leaves k_n(x_i, x*) unchanged"),
    Mutation("resume-recompute", "jobs/run.py",
             'if done is None or (retry_failed and done.get("status") == FAILED):', "if True:",
             ("tests/jobs/test_run.py",), "a rerun recomputes every finished item"),
    Mutation("retry-always", "jobs/run.py", '(retry_failed and done.get("status") == FAILED)',
             '(done.get("status") == FAILED)',
             ("tests/jobs/test_run.py",), "failed items are rerun without --retry-failed"),
    Mutation("settings-accepted", "jobs/rundir.py", "        if changes:\n            raise SettingsChanged",
             "        if False:\n            raise SettingsChanged",
             ("tests/jobs/test_run.py", "tests/jobs/test_rundir.py"), "a rerun with other settings is not refused"),
    Mutation("default-adapter-lookup", "arc/pretrain.py",
             '    return path if path is not None and (path / "adapter_config.json").is_file() else None',
             "    return None", ("tests/arc/test_pretrain.py::test_the_shipped_adapter_is_the_default_for_its_model",),
             "no shipped adapter is ever found"),
    Mutation("default-adapter-unused", "cli/solve.py", "solve_config.adapter = str(shipped) if shipped else None",
             "solve_config.adapter = None",
             ("tests/test_cli.py::test_the_shipped_adapter_is_the_default_for_its_model",),
             "`arc solve` finds the shipped adapter but does not merge it"),
    Mutation("no-adapter-ignored", "cli/solve.py", "    if not adapter and not no_adapter:", "    if not adapter:",
             ("tests/test_cli.py::test_the_shipped_adapter_is_the_default_for_its_model",),
             "--no-adapter still merges the shipped adapter"),
    Mutation("bytes-as-characters", "lm/bpb.py", '    return len(text.encode("utf-8"))', "    return len(text)",
             ("tests/test_trust.py::test_13_bits_per_byte_divides_by_utf8_bytes_of_a_non_ascii_continuation",),
             "bits per byte divides by characters, not UTF-8 bytes (wrong for any non-ASCII corpus)"),
    Mutation("resume-skips-steps", "finetune.py", "islice(batches, start_step * args.grad_accum, None)",
             "islice(batches, start_step, None)",
             ("tests/test_finetune.py::test_resume_from_a_checkpoint_continues_the_same_trajectory",),
             "a resumed list of sequences skips start_step micro-batches, not start_step x grad_accum"),
    Mutation("checkpointing-ignored", "finetune.py",
             "        if args.gradient_checkpointing:\n            _set_checkpointing(model, on=True)",
             "        if False:\n            _set_checkpointing(model, on=True)",
             ("tests/arc/test_pretrain.py::test_gradient_checkpointing_trains_the_same_adapter",),
             "gradient checkpointing is never turned on"),
]


def copy_src(dest: Path) -> Path:
    shutil.copytree(REPO / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest / "src"


def apply(mutation: Mutation, src: Path) -> None:
    path = src / "testtime" / mutation.file
    text = path.read_text()
    if text.count(mutation.old) != 1:
        sys.exit(f"mutation {mutation.name}: the snippet occurs {text.count(mutation.old)} times in "
                 f"src/testtime/{mutation.file}, not once; update it in dev/mutate.py")
    path.write_text(text.replace(mutation.old, mutation.new))


def env_for(src: Path, scratch: Path) -> dict[str, str]:
    path = os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1",
            "HYPOTHESIS_STORAGE_DIRECTORY": str(scratch / "hypothesis")}


def check_import(src: Path, env: dict[str, str]) -> None:
    where = subprocess.run([sys.executable, "-c", "import testtime; print(testtime.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not where.startswith(str(src)):
        sys.exit(f"the copy is not what gets imported ({where}); is testtime installed non-editable?")


def run_tests(tests: tuple[str, ...], env: dict[str, str], stop_first: bool) -> tuple[int, list[str], str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=line", "-rfE",
           *(["-x"] if stop_first else []), *tests]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, flags=re.M)
    return done.returncode, failed, done.stdout[-2000:] + done.stderr[-2000:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated mutation names")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    args = parser.parse_args()
    chosen = MUTATIONS
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {m.name for m in MUTATIONS})
        if unknown:
            sys.exit(f"no mutation {', '.join(unknown)}; see --list")
        chosen = [m for m in MUTATIONS if m.name in names]
    if args.list:
        for m in chosen:
            print(f"{m.name:24} {m.file:18} {m.what}")
        return

    scratch = Path(tempfile.mkdtemp(prefix="testtime-mutate-"))
    start = time.perf_counter()
    try:
        baseline = copy_src(scratch / "baseline")
        env = env_for(baseline, scratch)
        check_import(baseline, env)
        selections = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        code, failed, tail = run_tests(selections, env, stop_first=False)
        if code != 0:
            print(tail)
            sys.exit(f"the selected tests fail on the unmutated code ({', '.join(failed) or f'exit {code}'}); "
                     "fix that first")
        print(f"# dev/mutate.py on {platform.machine()}, {os.cpu_count()} CPUs, {date.today()}: "
              f"{len(chosen)} mutations; baseline passes ({time.perf_counter() - start:.0f} s)\n")
        print("| mutation | file | what breaks | result | caught by | s |")
        print("|---|---|---|---|---|---:|")
        survived = []
        for m in chosen:
            t0 = time.perf_counter()
            src = copy_src(scratch / m.name)
            apply(m, src)
            code, failed, tail = run_tests(m.tests, env_for(src, scratch), stop_first=True)
            if code == 0:
                result, by = "SURVIVED", "-"
                survived.append(m.name)
            else:
                result = "caught" if code == 1 else f"caught (pytest exit {code})"
                by = ", ".join(f"`{f.split('/')[-1]}`" for f in failed) or "(see output)"
            print(f"| {m.name} | {m.file} | {m.what} | {result} | {by} | {time.perf_counter() - t0:.0f} |",
                  flush=True)
            shutil.rmtree(scratch / m.name, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    caught = len(chosen) - len(survived)
    print(f"\n{caught}/{len(chosen)} caught in {time.perf_counter() - start:.0f} s"
          + (f"; survived: {', '.join(survived)}" if survived else ""))
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
