"""The command line: `python -m dev.corpus --out DIR [options]` (see the package docstring)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import __doc__ as _PACKAGE_DOC
from .build import CorpusArgs, build_corpus, print_table


def _parser(defaults: CorpusArgs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dev.corpus",
                                     description=(_PACKAGE_DOC or "").split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--prompts-per-domain", type=int, default=defaults.prompts_per_domain)
    parser.add_argument("--max-memory-docs-per-domain", type=int,
                        default=defaults.max_memory_docs_per_domain, help="0: no limit")
    parser.add_argument("--prompt-bytes", type=int, default=defaults.prompt_bytes)
    parser.add_argument("--continuation-bytes", type=int, default=defaults.continuation_bytes)
    parser.add_argument("--max-doc-bytes", type=int, default=defaults.max_doc_bytes)
    parser.add_argument("--min-memory-bytes", type=int, default=defaults.min_memory_bytes)
    parser.add_argument("--domains", default=",".join(defaults.domains), help="comma-separated, in order")
    parser.add_argument("--source", action="append", default=[], metavar="DOMAIN=PATH",
                        help="replace a domain's default roots (repeat for several roots)")
    parser.add_argument("--exclude", action="append", metavar="REGEX",
                        help=f"skip files whose path matches (repeatable; replaces the default "
                             f"{defaults.exclude}; --exclude '$^' keeps everything)")
    return parser


def parse_args(argv: list[str] | None = None) -> CorpusArgs:
    """The command line's CorpusArgs (argparse exits on bad arguments and on --help)."""
    defaults = CorpusArgs(out=Path("."))
    parser = _parser(defaults)
    ns = parser.parse_args(argv)
    sources: dict[str, list[Path]] = {}
    for item in ns.source:
        name, eq, path = item.partition("=")
        if not eq:
            parser.error(f"--source {item!r}: expected DOMAIN=PATH, e.g. --source man=/usr/share/man")
        sources.setdefault(name, []).append(Path(path))
    return CorpusArgs(out=ns.out, seed=ns.seed, prompts_per_domain=ns.prompts_per_domain,
                      max_memory_docs_per_domain=ns.max_memory_docs_per_domain, prompt_bytes=ns.prompt_bytes,
                      continuation_bytes=ns.continuation_bytes, max_doc_bytes=ns.max_doc_bytes,
                      min_memory_bytes=ns.min_memory_bytes,
                      domains=tuple(d for d in ns.domains.split(",") if d), sources=sources,
                      exclude=tuple(ns.exclude) if ns.exclude is not None else defaults.exclude)


def main(argv: list[str] | None = None) -> None:
    """Build the corpus the command line asks for, printing progress and the summary table."""
    args = parse_args(argv)
    print(f"# corpus | out {args.out} | seed {args.seed} | {args.prompts_per_domain} prompts/domain "
          f"| memory cap {args.max_memory_docs_per_domain} docs/domain | prompt {args.prompt_bytes} B "
          f"+ continuation {args.continuation_bytes} B | docs truncated to {args.max_doc_bytes} B "
          f"| exclude {list(args.exclude)} | {time.strftime('%Y-%m-%d')}")
    start = time.perf_counter()
    counts = build_corpus(args)
    print_table(counts)
    print(f"# {sum(c.memory for c in counts.values()):,} memory documents, "
          f"{sum(c.prompts for c in counts.values())} prompts, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
