"""An offline bundle of testtime for the ARC Prize on Kaggle (no internet there), and its notebook.

    OUT/manifest.json        what the bundle holds: its target, every wheel's SHA-256, the model
                             files' hashes inside their wheels, the shipped adapter's card and weights
    OUT/wheels/*.whl         testtime and every dependency for the target (torch only with --with-torch)
    OUT/testtime-arc.ipynb   installs from OUT/wheels (pip --isolated --no-index), runs `arc solve
                             --time-budget` on the competition's tasks, writes submission.json

    kaggle/wheels.py     targets (Python version + platform), wheel tags, requirement closures
    kaggle/bundle.py     build a bundle: resolve and download with pip, write the manifest
    kaggle/check.py      read a bundle back: what is missing or mismatched
    kaggle/notebook.py   what the notebook calls once testtime is installed

This part sits above the domains (it packages `arc`'s adapter and `lm`'s embedder) and below the CLI.
"""

from __future__ import annotations

from pathlib import Path

KIND = "testtime kaggle bundle"
"""`kind` in every bundle's manifest: how the notebook and `kaggle check` recognise one."""
FORMAT = 1
"""Bumped when the manifest's layout changes."""
MANIFEST = "manifest.json"
WHEELS = "wheels"
NOTEBOOK = "testtime-arc.ipynb"
NOTEBOOK_SOURCE = Path(__file__).with_name(NOTEBOOK)
"""The notebook as shipped in the package; `bundle` copies it into the bundle."""


class BundleError(Exception):
    """A bundle cannot be built or read; the message names the flag or file and the fix."""
