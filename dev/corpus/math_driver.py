"""Seeded DeepMind Mathematics problems, one JSON line each: run by dev/corpus/mathematics.py inside the
separate environment that holds `mathematics-dataset` and sympy 1.5.1 (never imported by dev.corpus).

    python math_driver.py SEED PER_MODULE MODULE[,MODULE...]  ->  {"module", "question", "answer"} lines

`python -m mathematics_dataset.generate` has no seed flag, wraps every problem at 80 columns and colours
the answer with ANSI codes. This driver uses the same module table (`generate.init_modules`: the "train"
regime over the full entropy range) and the same sampler (`generate.sample_from_module`, which drops
over-long problems), but seeds Python's and NumPy's generators per module with crc32("SEED/MODULE"), so a
module's problems depend on the seed and the module only, and writes the exact question and answer.
The caller sets PYTHONHASHSEED=0. The `_composed` modules are not reproducible even so (their order
of sub-expressions varies run to run); the builder does not ask for them.
"""

import json
import random
import sys
import zlib

import numpy as np
from mathematics_dataset import generate


def main(argv: list[str]) -> None:
    seed, per_module, names = int(argv[1]), int(argv[2]), argv[3].split(",")
    generate.FLAGS([argv[0]])  # absl flags must be parsed before the module table reads them
    generate.init_modules()
    table = generate.filtered_modules["train"]
    unknown = [name for name in names if name not in table]
    if unknown:
        sys.exit(f"unknown module(s) {unknown}; choose from {sorted(table)}")
    for name in names:
        module_seed = zlib.crc32(f"{seed}/{name}".encode())
        random.seed(module_seed)
        np.random.seed(module_seed)
        for _ in range(per_module):
            problem, _dropped = generate.sample_from_module(table[name])
            row = {"module": name, "question": str(problem.question), "answer": str(problem.answer)}
            sys.stdout.write(json.dumps(row) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv)
