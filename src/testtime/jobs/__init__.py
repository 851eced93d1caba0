"""The job layer: items in, one record each, into one run directory, here or on Ray.

Knows nothing of ARC or LMs. A domain supplies a `Job` (set up once per process, run one item
into a JSON-able record, an id and a cost per item). Records travel as JSON (what Ray ships, what
the run directory seals in the envelope of `testtime.records`), and the job layer reads only their
id and `status`; each domain reads them back as its typed records. `run_items` resumes from the `RunDir`,
hands the rest to an executor (`LocalExecutor`, or `RayExecutor` inside `ray_session`), catches
each item's exception once (`run_one`) and files every record as it arrives. Under a time
`Budget`, items start in the order of a `Plan` while they are expected to end in time, and check
the deadline inside their work (`check_deadline`, `TimeUp`).

    with executor_for(scale) as executor:            # scale: ScaleArgs, or None for in-process
        run_dir = RunDir("runs/x", records="tasks")
        run_dir.open("arc solve", settings, options)  # refuses other result-affecting settings
        records, counts = run_items(job, tasks, executor, run_dir, emit=print)
"""

from testtime.jobs.budget import Budget, Plan, TimeUp, check_deadline, format_duration, parse_duration
from testtime.jobs.job import (
    FAILED,
    OK,
    Counts,
    Emit,
    Event,
    Finished,
    Job,
    Notice,
    Started,
    Status,
    Step,
    failure,
    ignore,
    run_one,
)
from testtime.jobs.ray_pool import INSTALL, RayExecutor, ScaleArgs, ScaleError, ray_session, require_ray
from testtime.jobs.run import Executor, LocalExecutor, SetupError, describe, executor_for, run_items
from testtime.jobs.rundir import (
    RunDir,
    RunDirError,
    SettingsChanged,
    WriteFailed,
    changed_settings,
    fingerprint,
    record_name,
    write_output,
)

__all__ = [
    "Budget", "Plan", "TimeUp", "check_deadline", "format_duration", "parse_duration",
    "FAILED", "INSTALL", "OK", "Counts", "Emit", "Event", "Executor", "Finished", "Job",
    "LocalExecutor", "Notice", "RayExecutor", "RunDir", "RunDirError", "ScaleArgs", "ScaleError", "SettingsChanged",
    "SetupError", "Started", "Status", "Step", "changed_settings", "describe", "executor_for", "failure", "ignore",
    "record_name", "ray_session", "require_ray", "run_items", "run_one", "WriteFailed", "fingerprint", "write_output",
]
