"""Build an offline multi-domain benchmark corpus: a memory and held-out prompts, no document in both.

The Pile cannot be downloaded offline, so the SIFT benchmark (`bench/sift.py`) draws its text from
sources that can be pinned. Each domain is one kind of text; the default --domains are the pinned
ones, whose text is fixed by a version and a hash, not by the machine image:

    domain         files read                                    pinned by
    math           DeepMind Mathematics problems, --math-per-doc MATH_ENV (mathematics-dataset 1.0.1, sympy
                   a document ("question\nanswer" lines)         1.5.1, ...): generated into --cache, its own venv
    code           this interpreter's standard library           the Python version (3.11.7 from pyenv here,
                   (sysconfig "stdlib")/**/*.py, less tests,     not Debian's /usr/lib/python3.11)
                   site-packages and pydoc_data
    pypi-code      the transformers wheel's **/*.py, less tests  transformers==4.46.3 wheel, SHA-256 a12ef6f5...
    django-docs    the Django sdist's docs/**/*.txt (reST),      Django==4.2.17 sdist, SHA-256 6b56d834...
                   less docs/releases/
    release-notes  the Django sdist's docs/releases/*.txt: many  (the same sdist)
                   near-identical point-release notes

The archives (`archives.PINNED`) are downloaded once from PyPI into --cache/archives, checked
against their SHA-256 and extracted there; --source DOMAIN=PATH replaces a domain's roots (then
nothing is downloaded). The domains of the Debian image stay available by name, unpinned:

    domain      files read                                      supplied by (apt-get install ...)
    man         /usr/share/man/man*/*, roff -> roff_to_text     manpages manpages-dev (+ every package)
    licenses    /usr/share/common-licenses/*,                   base-files (+ every package's copyright);
                /usr/share/doc/*/copyright, LICENSE*/COPYING*   PyPI packages' own licence files
                in /usr/lib/python3/dist-packages and this
                interpreter's site-packages
    changelogs  /usr/share/doc/*/changelog*(.gz)                every package (changelog.Debian.gz)
    docs        /usr/share/doc/python3.11/html/**/*.html,       python3.11-doc
                HTML -> html_to_text (html.parser)

A domain whose files are all missing is skipped with a message naming where they come from.

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
    pins.json       hashes of the memory and the prompts, per domain, the prompt ids, and what pins
                    each domain (`pins`): commit it with a benchmark; --check-pins FILE compares a
                    rebuild with it
    redundancy.json with --index DIR: the memory indexed as `testtime lm index` does, and per domain
                    the share of chunks with a neighbour above cosine 0.9 (`redundancy`)

    .venv/bin/python -m dev.corpus --out runs/corpus          # from the repository root
    .venv/bin/python -m dev.corpus --out DIR --domains code,man --source man=/opt/man --seed 1
    .venv/bin/python -m dev.corpus --out DIR --domains django-docs --source django-docs=/src/django

In Python: `build_corpus(CorpusArgs(out=Path(DIR), domains=("code",)))`. Modules: `roff` and
`html` (the converters), `domains` (where each kind of text lives), `archives` (the pinned PyPI
archives), `mathematics` (and `math_driver.py`, run in the separate environment), `split`
(normalising and cutting documents), `build` (the corpus), `pins`, `redundancy`; `python -m` runs
`__main__`.
"""

from .archives import DOMAIN_ARCHIVES, PINNED, Archive, prepare_archive
from .build import (
    CorpusArgs,
    DomainCounts,
    build_corpus,
    build_domain,
    domain_order,
    drop_leaks,
    prepare_sources,
    print_table,
)
from .domains import Domain, default_domains, read_text
from .html import html_to_text
from .mathematics import MATH_ENV, MATH_MODULES, parse_problems, prepare_math, problem_documents
from .pins import compare_pins, corpus_pins, domain_pins
from .roff import roff_to_text
from .split import content_keys, cut, normalise, split_prompt, truncate

__all__ = [
    "DOMAIN_ARCHIVES",
    "MATH_ENV",
    "MATH_MODULES",
    "PINNED",
    "Archive",
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
    "domain_pins",
    "drop_leaks",
    "html_to_text",
    "normalise",
    "parse_problems",
    "prepare_archive",
    "prepare_math",
    "prepare_sources",
    "print_table",
    "problem_documents",
    "read_text",
    "roff_to_text",
    "split_prompt",
    "truncate",
]
