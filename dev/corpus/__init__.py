"""Build an offline multi-domain benchmark corpus: a memory and held-out prompts, no document in both.

The Pile cannot be downloaded offline, so the SIFT benchmark (`bench/sift.py`) draws its text from
what any Debian system can install. Each domain is one kind of text:

    domain      files read                                      supplied by (apt-get install ...)
    code        /usr/lib/python3.11/**/*.py, tests excluded     libpython3.11-stdlib (always present)
    pypi-code   this interpreter's site-packages/**/*.py,       the project's .venv (pinned by its lock):
                tests excluded                                  vendored and generated code, near-duplicates
    math        DeepMind Mathematics problems, --math-per-doc   generated into --cache by `mathematics`
                a document ("question\nanswer" lines)           (PyPI mathematics-dataset, its own venv)
    man         /usr/share/man/man*/*, roff -> roff_to_text     manpages manpages-dev (+ every package)
    licenses    /usr/share/common-licenses/*,                   base-files (+ every package's copyright);
                /usr/share/doc/*/copyright, LICENSE*/COPYING*   PyPI packages' own licence files
                in /usr/lib/python3/dist-packages and this
                interpreter's site-packages
    changelogs  /usr/share/doc/*/changelog*(.gz)                every package (changelog.Debian.gz)
    docs        /usr/share/doc/python3.11/html/**/*.html,       python3.11-doc
                HTML -> html_to_text (html.parser)

A domain whose files are all missing is skipped with a message naming the package to install.

Per domain: list the files (sorted), shuffle them with the seed, then read, convert, normalise
(newlines, trailing spaces, runs of blank lines) and truncate each to --max-doc-bytes. Duplicates
are dropped BEFORE the split, across all domains: a document is a duplicate when its whitespace- and
case-normalised text, or its prompt+continuation window, hashes like an earlier document's (licences
and changelogs repeat across packages). The first --prompts-per-domain documents long enough for a
prompt and a continuation are held out; the following documents of at least --min-memory-bytes fill
the memory, up to --max-memory-docs-per-domain documents and --max-memory-mb-per-domain MB (the
memory is full at the first document that would pass it, which is left out). Reading stops once both
are full, so only as many files are read as needed. A held-out document gives a prompt (its first
~--prompt-bytes bytes) and a continuation (the next ~--continuation-bytes bytes), each cut before a
line break, else before a space, never shorter than half its size; prompt + continuation is exactly
the start of the document. Leaks are removed: a memory document in which a held-out continuation
(the text that is scored) occurs verbatim is dropped and counted ("leaks"); nothing else is, so
near-duplicates (a module's problems with other numbers, vendored code with other names) stay: they
are what SIFT is for.

Outputs in --out, written atomically (testtime.atomic: a temporary file, then os.replace):
    memory.jsonl    {"id", "domain", "source", "text"}
    prompts.jsonl   {"id", "domain", "source", "prompt", "continuation"}
    corpus.json     arguments, seed and counts per domain, the hashes of pins.json
    pins.json       hashes of the memory and the prompts, per domain, and the prompt ids (`pins`):
                    commit it with a benchmark; --check-pins FILE compares a rebuild with it
    redundancy.json with --index DIR: the memory indexed as `testtime lm index` does, and per domain
                    the share of chunks with a neighbour above cosine 0.9 (`redundancy`)

    .venv/bin/python -m dev.corpus --out runs/corpus          # from the repository root
    .venv/bin/python -m dev.corpus --out DIR --domains code,man --source man=/opt/man --seed 1

In Python: `build_corpus(CorpusArgs(out=Path(DIR), domains=("code",)))`. Modules: `roff` and
`html` (the converters), `domains` (where each kind of text lives), `mathematics` (and
`math_driver.py`, run in the separate environment), `split` (normalising and cutting documents),
`build` (the corpus), `pins`, `redundancy`; `python -m` runs `__main__`.
"""

from .build import CorpusArgs, DomainCounts, build_corpus, build_domain, domain_order, drop_leaks, print_table
from .domains import Domain, default_domains, read_text
from .html import html_to_text
from .mathematics import MATH_ENV, MATH_MODULES, parse_problems, prepare_math, problem_documents
from .pins import compare_pins, corpus_pins
from .roff import roff_to_text
from .split import content_keys, cut, normalise, split_prompt, truncate

__all__ = [
    "MATH_ENV",
    "MATH_MODULES",
    "CorpusArgs",
    "Domain",
    "DomainCounts",
    "build_corpus",
    "build_domain",
    "compare_pins",
    "corpus_pins",
    "content_keys",
    "cut",
    "default_domains",
    "domain_order",
    "drop_leaks",
    "html_to_text",
    "normalise",
    "parse_problems",
    "prepare_math",
    "print_table",
    "problem_documents",
    "read_text",
    "roff_to_text",
    "split_prompt",
    "truncate",
]
