"""Standalone tools shipped with testtime: programs that use only numpy, the standard library and
`testtime.atomic`, never the models or the command line (`testtime.arc`, `testtime.lm`,
`testtime.cli`).

    corpus    the offline multi-domain benchmark corpus (`python -m testtime.tools.corpus`)
"""
