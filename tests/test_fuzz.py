"""Fuzzing the ways in: random task files, Kaggle challenge/solution pairs and prompt files.

Whatever the shape of the JSON and however hostile the ids (`..`, absolute paths, markup, NUL,
very long, unicode, duplicates), loading never raises anything but the loader's own error,
solving never writes outside --out, the CLI never ends in a traceback (exit 0, 1 or 2 only),
and every id of the input is accounted for: submitted, or rejected with a reason.

The library runs reuse one loaded tiny model per module; a few examples go through the CLI.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fuzzing import changed_outside, fresh_dir, json_values, run_cli, snapshot
from testtime.arc.task import CHALLENGES_SUFFIX, SOLUTIONS_SUFFIX, TaskError, load_tasks

FUZZ = settings(max_examples=30, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLI_FUZZ = settings(FUZZ, max_examples=8)

# --- strategies ---------------------------------------------------------------------------------

HOSTILE_IDS = ["..", ".", "../x", "../../etc/victim", "/tmp/abs/victim", "[/]", "[bold]x[/bold]", "nul\x00id",
               "L" * 300, "ünïcødé☃", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "config", "submission", "CON", ".hidden", "~x-0123456789abcdef",
               "", " ", "a/b", "a_b", "-x", "line\nbreak", "tab\tid", "\ud800"]
ids = st.one_of(st.sampled_from(HOSTILE_IDS), st.text(max_size=12))
# file names: anything a POSIX file name may hold (no slash, no NUL), short enough for the file system
stems = st.one_of(st.sampled_from(["..x", "[b]", "-x", "config", "a b", "ünï☃", "L" * 200, "t0"]),
                  st.text(st.characters(exclude_characters="/\x00", exclude_categories=("Cs",)), min_size=1,
                          max_size=20)).filter(lambda s: s not in (".", "..") and len(s.encode()) <= 200)

grids = st.integers(1, 3).flatmap(lambda h: st.integers(1, 3).flatmap(
    lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=h, max_size=h)))


@st.composite
def task_data(draw) -> Any:
    """A task: valid (with or without test outputs), one with a part broken, or any JSON at all."""
    kind = draw(st.sampled_from(["valid", "valid", "no outputs", "broken", "junk"]))
    if kind == "junk":
        return draw(json_values)
    task = {"train": [{"input": draw(grids), "output": draw(grids)} for _ in range(draw(st.integers(1, 2)))],
            "test": [{"input": draw(grids), **({} if kind == "no outputs" else {"output": draw(grids)})}
                     for _ in range(draw(st.integers(1, 2)))]}
    if kind == "broken":
        part = draw(st.sampled_from(["train", "test"]))
        where = draw(st.sampled_from(["part", "example", "input", "output", "drop"]))
        if where == "part":
            task[part] = draw(json_values)
        elif where == "drop":
            del task[part]
        elif where == "example":
            task[part][0] = draw(json_values)
        else:
            task[part][0][where] = draw(json_values)
    return task


def object_text(pairs: list[tuple[str, Any]]) -> str:
    """A JSON object written pair by pair, so a key may repeat (the last one wins when read)."""
    return "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}"


@st.composite
def file_text(draw) -> str:
    kind = draw(st.sampled_from(["task", "task", "multi", "not json", "deep", "json"]))
    if kind == "task":
        return json.dumps(draw(task_data()))
    if kind == "multi":
        return object_text(draw(st.lists(st.tuples(ids, task_data()), min_size=1, max_size=3)))
    if kind == "not json":
        return draw(st.sampled_from(["", "{", "not json", '{"train": [', "\ufeff{}", "[" * 5]))
    if kind == "deep":
        return "[" * 1100 + "]" * 1100
    return json.dumps(draw(json_values))


@st.composite
def task_directory(draw) -> dict[str, str]:
    """File name -> text for a directory of task files (a few of them share a task id)."""
    names = draw(st.lists(stems, min_size=1, max_size=4, unique_by=lambda s: s.lower()))
    files = {f"{name}.json": draw(file_text()) for name in names}
    if draw(st.booleans()):  # the same id twice: as a file stem and as a key of a multi-task file
        files["dupes.json"] = object_text([(names[0], draw(task_data())), ("other", draw(task_data()))])
    return files


def solution_entry(task: Any) -> Any:
    """What a solutions file holds for `task`: its test outputs (or whatever stands in their place)."""
    tests = task.get("test") if isinstance(task, dict) else None
    if not isinstance(tests, list):
        return tests
    return [t.get("output", [[0]]) if isinstance(t, dict) else t for t in tests]


@st.composite
def kaggle_pair(draw) -> dict[str, str]:
    """A challenges file with hostile (and repeated) ids, and maybe a solutions file, good or bad."""
    pairs = draw(st.lists(st.tuples(ids, task_data()), min_size=1, max_size=4))
    if draw(st.booleans()):
        pairs.append((pairs[0][0], draw(task_data())))
    files = {f"fz{CHALLENGES_SUFFIX}": object_text(pairs)}
    kind = draw(st.sampled_from(["none", "good", "partly", "junk", "not json"]))
    if kind == "good":
        files[f"fz{SOLUTIONS_SUFFIX}"] = json.dumps({k: solution_entry(v) for k, v in pairs})
    elif kind == "partly":  # some entries missing, some with another number of grids, some junk
        entries = {}
        for k, _ in pairs:
            entries[k] = draw(st.one_of(st.lists(grids, max_size=3), json_values))
        files[f"fz{SOLUTIONS_SUFFIX}"] = json.dumps(dict(list(entries.items())[: draw(st.integers(0, len(entries)))]))
    elif kind == "junk":
        files[f"fz{SOLUTIONS_SUFFIX}"] = json.dumps(draw(json_values))
    elif kind == "not json":
        files[f"fz{SOLUTIONS_SUFFIX}"] = "{ nope"
    return files


# --- helpers ----------------------------------------------------------------------------------

def write_files(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8", errors="surrogatepass")


def saved_ids(out: Path, key: str) -> list[str]:
    """The ids held by the records under `out` (wherever the layout puts them), one per record file."""
    found = []
    for path in out.rglob("*.json"):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and key in data:
            found.append(data[key])
    return sorted(found)


def ids_in(path: Path) -> set[str]:
    """The task ids a file offers: the keys of a multi-task object, else its stem (how ARC files read)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError):
        return {path.stem}
    if isinstance(data, dict) and data and "train" not in data and "test" not in data:
        return set(data)
    return {path.stem}


def unaccounted(source: Path, files: list[Path], loaded: set[str], errors: list[TaskError]) -> list[tuple]:
    """(file, id) pairs of the input that were neither loaded nor rejected with a reason naming them."""
    missing = []
    for path in files:
        for task_id in ids_in(path):
            if task_id in loaded:
                continue
            named = [e for e in errors if e.reason and e.file in (str(path), str(source))
                     and e.task_id in (task_id, None, path.stem)]
            if not named:
                missing.append((path.name, task_id))
    return missing


@pytest.fixture(scope="module")
def arc_job(tiny_model_dir):
    """One ArcJob holding the tiny model (no TTT, 2 new tokens), reused by every example."""
    from testtime.arc.settings import InferArgs, SolveConfig
    from testtime.arc.solve import ArcJob, Solver
    from testtime.lora import AdapterHost
    from testtime.models import load_model

    config = SolveConfig(model=str(tiny_model_dir), ttt=False, infer=InferArgs(max_new_tokens=2))
    loaded = load_model(str(tiny_model_dir))
    return ArcJob(config, solver=Solver(AdapterHost(loaded.model, config.lora), loaded.tokenizer, config))


@pytest.fixture(scope="module")
def lm_job(tiny_model_dir):
    """One LmJob (select none) holding the tiny model, reused by every example."""
    from testtime.lm.evaluate import LmJob
    from testtime.lm.settings import EvalConfig, PromptTTT
    from testtime.lora import AdapterHost
    from testtime.models import load_model

    config = EvalConfig(model=str(tiny_model_dir), ttt=PromptTTT(select="none"))
    loaded = load_model(str(tiny_model_dir))
    return LmJob(config, parts=(AdapterHost(loaded.model, config.lora), loaded.tokenizer, None, None))


def input_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.endswith(SOLUTIONS_SUFFIX))


def load_or_reject(source: Path) -> tuple[Any, TaskError | None]:
    """load_tasks, or the TaskError saying why the whole source is rejected (nothing else may escape)."""
    try:
        return load_tasks(source), None
    except TaskError as err:
        assert err.reason and err.file, err
        return None, err


# --- ARC: the library, many examples ------------------------------------------------------------

def check_arc_source(work: Path, source: Path, files: list[Path], job) -> None:
    from testtime.arc.solve import solve_tasks
    from testtime.jobs import RunDir

    ts, rejected = load_or_reject(source)
    kind = "directory" if source.is_dir() else "challenges" if source.name.endswith(CHALLENGES_SUFFIX) else "file"
    event(f"{kind}: rejected whole" if rejected is not None else
          f"{kind}: {min(len(ts.tasks), 3)}+ tasks, {min(len(ts.errors), 2)}+ bad, "
          f"{min(len(getattr(ts, 'unscored', [])), 1)}+ unscored")
    if rejected is not None:
        return  # the whole source named with a reason: every id in it is rejected
    loaded = {t.id for t in ts.tasks}
    assert len(loaded) == len(ts.tasks)  # no id twice
    assert unaccounted(source, files, loaded, ts.errors) == []
    if not ts.tasks:
        return
    (work / "out").mkdir(exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="run-", dir=work / "out"))  # a new run directory for each source
    before = snapshot(work)
    records, submission, counts = solve_tasks(job, ts.tasks, RunDir(out, records="tasks"))
    assert changed_outside(before, snapshot(work), out) == []
    assert set(submission) == loaded == set(json.loads((out / "submission.json").read_text()))
    assert counts.failed == 0, [r.error for r in records]
    assert all(len(submission[t.id]) == len(t.test) for t in ts.tasks)
    assert saved_ids(out, "task_id") == sorted(loaded)  # one record per task, none overwritten


@FUZZ
@given(files=task_directory())
def test_fuzz_task_directories_load_and_solve(tmp_path_factory, arc_job, files):
    work = fresh_dir(tmp_path_factory)
    try:
        write_files(work / "in", files)
        check_arc_source(work, work / "in", input_files(work / "in"), arc_job)
        for path in input_files(work / "in"):  # and each file on its own
            check_arc_source(work, path, [path], arc_job)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@FUZZ
@given(files=kaggle_pair())
def test_fuzz_kaggle_challenges_and_solutions_load_and_solve(tmp_path_factory, arc_job, files):
    work = fresh_dir(tmp_path_factory)
    try:
        write_files(work / "in", files)
        challenges = work / "in" / f"fz{CHALLENGES_SUFFIX}"
        check_arc_source(work, challenges, [challenges], arc_job)
        ts, _ = load_or_reject(challenges)
        if ts is not None:  # a bad solutions file or entry never drops a challenge: it is only unscored
            assert {t.id for t in ts.tasks} | {e.task_id for e in ts.errors} >= ids_in(challenges) - {None}
            assert all(e.reason for e in ts.unscored)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- ARC: the CLI, a few examples ---------------------------------------------------------------

@pytest.mark.slow
@CLI_FUZZ
@given(files=st.one_of(task_directory(), kaggle_pair()))
def test_fuzz_arc_solve_cli(tmp_path_factory, tiny_model_dir, files):
    work = fresh_dir(tmp_path_factory)
    try:
        write_files(work / "in", files)
        challenges = [p for p in (work / "in").iterdir() if p.name.endswith(CHALLENGES_SUFFIX)]
        source = challenges[0] if challenges else work / "in"
        out = work / "out" / "run"
        before = snapshot(work)
        result = run_cli("arc", "solve", str(source), "--no-ttt", "--model", str(tiny_model_dir),
                         "--max-new-tokens", "2", "--out", str(out))
        assert changed_outside(before, snapshot(work), out) == []
        event(f"arc solve exit {result.exit_code}")
        ts, rejected = load_or_reject(source)
        if rejected is not None or not ts.tasks:
            assert result.exit_code == 2 and "\nerror: " in "\n" + result.output, result.output
            return
        assert result.exit_code == 0, result.output
        assert set(json.loads((out / "submission.json").read_text())) == {t.id for t in ts.tasks}
        assert result.output.count("skipped bad task:") == len(ts.errors)
        assert result.output.count("unscored:") == len(getattr(ts, "unscored", []))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- lm eval: prompt files ----------------------------------------------------------------------

texts = st.one_of(st.text(max_size=30), st.sampled_from(["", " ", "the quick brown fox", "\x00", "[/]", "é☃"]))
good_rows = st.fixed_dictionaries({"id": ids, "prompt": texts, "continuation": texts},
                                  optional={"domain": st.one_of(st.text(max_size=6), json_values)})
odd_rows = st.fixed_dictionaries(  # a field missing or not a string
    {"id": st.one_of(ids, json_values), "prompt": st.one_of(texts, json_values)},
    optional={"continuation": st.one_of(texts, json_values), "domain": json_values})
lines = st.one_of(good_rows.map(json.dumps), good_rows.map(json.dumps), good_rows.map(json.dumps),
                  odd_rows.map(json.dumps), json_values.map(json.dumps),
                  st.sampled_from(["", "   ", "{", "not json", "[1, 2]", '"a string"', "null"]))


@st.composite
def prompt_file(draw) -> str:
    chosen = draw(st.lists(lines, min_size=1, max_size=6))
    if draw(st.booleans()):  # a line repeated: the same id twice
        chosen.append(chosen[0])
    return "\n".join(chosen) + "\n"


def check_prompts(path: Path):
    """read_prompts accounts for every non-blank line: a prompt, or an error naming that line."""
    from testtime.lm.evaluate import read_prompts

    pf = read_prompts(path)
    numbered = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    assert len(pf.prompts) + len(pf.errors) == len(numbered)
    named = [int(e[len(str(path)) + 1:].split(":", 1)[0]) for e in pf.errors]
    assert all(e.startswith(f"{path}:") for e in pf.errors) and len(set(named)) == len(named)
    assert set(named) <= set(numbered)
    assert len({p.id for p in pf.prompts}) == len(pf.prompts)
    return pf


@FUZZ
@given(text=prompt_file())
def test_fuzz_prompt_files_read_and_evaluate(tmp_path_factory, lm_job, text):
    from testtime.lm.evaluate import evaluate, select_dir

    work = fresh_dir(tmp_path_factory)
    try:
        path = work / "prompts.jsonl"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        pf = check_prompts(path)
        event(f"{min(len(pf.prompts), 3)}+ prompts, {min(len(pf.errors), 2)}+ bad lines")
        if not pf.prompts:
            return
        out = work / "out"
        before = snapshot(work)
        results, failures, _ = evaluate(lm_job, pf.prompts, select_dir(out, "none"))
        assert changed_outside(before, snapshot(work), out) == []
        assert sorted(r.prompt_id for r in results + failures) == sorted(p.id for p in pf.prompts)
        assert saved_ids(out, "prompt_id") == sorted(p.id for p in pf.prompts)  # one record each, none overwritten
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.slow
@CLI_FUZZ
@given(text=prompt_file())
def test_fuzz_lm_eval_cli(tmp_path_factory, tiny_model_dir, text):
    work = fresh_dir(tmp_path_factory)
    try:
        path = work / "prompts.jsonl"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        out = work / "out"
        before = snapshot(work)
        result = run_cli("lm", "eval", "--prompts", str(path), "--select", "none", "--model", str(tiny_model_dir),
                         "--out", str(out))
        assert changed_outside(before, snapshot(work), out) == []
        event(f"lm eval exit {result.exit_code}")
        pf = check_prompts(path)
        if not pf.prompts:
            assert result.exit_code == 2 and "no usable prompt" in result.output, result.output
            return
        assert result.exit_code in (0, 1), result.output
        assert result.output.count("skipped bad prompt line:") == len(pf.errors)
        assert saved_ids(out, "prompt_id") == sorted(p.id for p in pf.prompts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
