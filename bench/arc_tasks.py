"""The ARC tasks the benchmarks report on (imported by name: `from arc_tasks import EVAL_TASKS`)."""

EVAL_TASKS = ("66e6c45b", "00576224", "be03b35f", "e633a9e5", "4cd1b7b2", "ca8de6ea", "60c09cac", "2072aba6",
              "6ea4a07e", "48131b3c", "68b67ca3", "833dafe3", "e133d23d", "0c786b71", "59341089", "17cae0c1",
              "fc754716", "27a77e38", "d017b73f", "ed98d772")
"""The 20 smallest ARC-AGI-1 evaluation tasks by tokens, smallest first (the `bench/scale.py` list of
BENCHMARKS.md); the same 20 as the smallest by cells (`arc.solve.task_cells`)."""


def tuning_tasks(n: int = 20, skip: int = 20) -> list[str]:
    """The tuning split: the ARC-AGI-1 evaluation tasks ranked `skip`..`skip+n` by cells (ties by id), where
    recipes are chosen (never on EVAL_TASKS, which report them)."""
    from testtime.arc.solve import task_cells
    from testtime.arc.task import load_tasks

    tasks = sorted(load_tasks("arc-agi-1/evaluation").tasks, key=lambda t: (task_cells(t), t.id))
    return [t.id for t in tasks[skip:skip + n]]
