"""Building the corpus: per-domain reading and deduplication, the held-out split, the leak check,
the outputs (written atomically with `testtime.atomic`) and the summary table."""

from __future__ import annotations

import json
import re
import time
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from testtime.atomic import atomic_path, write_text_atomic

from .archives import DOMAIN_ARCHIVES, PINNED, prepare_archive
from .domains import Domain, default_domains
from .mathematics import MATH_MODULES, prepare_math
from .pins import corpus_pins, domain_pins
from .split import content_keys, normalise, split_prompt, truncate


@dataclass
class CorpusArgs:
    """Everything that decides the corpus; saved to corpus.json."""

    out: Path
    """Output directory."""
    seed: int = 0
    """Seed of the per-domain shuffles; the same seed and files give byte-identical outputs."""
    prompts_per_domain: int = 25
    """Held-out documents per domain."""
    max_memory_docs_per_domain: int = 3000
    """Memory documents per domain at most (0: no limit)."""
    max_memory_bytes_per_domain: int = 0
    """Memory bytes (UTF-8) per domain at most (0: no limit): the memory stops at the first document
    that would take it past this, so domains of very different sizes give memories of similar size."""
    prompt_bytes: int = 768
    """Target prompt size in UTF-8 bytes."""
    continuation_bytes: int = 768
    """Target continuation size in UTF-8 bytes."""
    max_doc_bytes: int = 65536
    """Documents are truncated (at a line break) to this many bytes."""
    min_memory_bytes: int = 200
    """Shorter documents are left out of the memory."""
    domains: tuple[str, ...] = ("math", "code", "pypi-code", "django-docs", "release-notes")
    """Domains to build, in this order (earlier domains win cross-domain duplicates). The default set is
    the pinned one: its text depends on versions and hashes, not on the machine image."""
    cache: Path = Path(".bench-data")
    """Where generated and downloaded domains live: CACHE/mathenv (the separate environment), CACHE/math/KEY
    (problems), CACHE/archives (the pinned PyPI archives, and their extracted files)."""
    math_modules: tuple[str, ...] = MATH_MODULES
    """DeepMind Mathematics modules of the math domain."""
    math_problems: int = 2000
    """Problems generated per module (2,000 x 14 modules: about 5 minutes on one core)."""
    math_per_doc: int = 40
    """Problems per math document (40: about 2 KB, long enough to hold out)."""
    sources: dict[str, list[Path]] = field(default_factory=dict)
    """Per-domain root directories replacing the defaults (--source DOMAIN=PATH)."""
    exclude: tuple[str, ...] = (r"/gcloud[_.]",)
    """Regexes; files whose path matches one are not read. Default: the 16,631 generated pages of
    google-cloud-cli (Google's package, not Debian's) that would otherwise be 84% of "man"."""


@dataclass
class DomainCounts:
    """What happened to one domain's files."""

    package: str
    """Where the files come from (Domain.package)."""
    roots: list[str]
    files: int = 0
    """Files listed under the roots, less the excluded ones."""
    excluded: int = 0
    read: int = 0
    """Files read before both the prompts and the memory were full."""
    unreadable: int = 0
    """Files that could not be read or decoded, or held binary data."""
    duplicates: int = 0
    """Documents whose text or prompt window hashes like an earlier one's (any domain)."""
    too_short: int = 0
    """Documents under --min-memory-bytes, or too short to hold out while prompts were wanted and
    the memory was full (its document cap reached, or the first document past its byte cap)."""
    prompts: int = 0
    memory: int = 0
    memory_bytes: int = 0
    leaks: int = 0
    """Memory documents dropped because a held-out continuation occurs in them verbatim."""
    skipped: str | None = None
    """Why the domain was skipped (its files are missing), else None."""


def domain_order(domain: Domain, args: CorpusArgs, counts: DomainCounts) -> list[tuple[Path, Path]]:
    """(root, file) pairs of a domain in the seed's shuffled order (shuffle of the sorted list)."""
    pairs = sorted({(root, p) for root in domain.roots if root.exists() for p in domain.files(root)})
    exclude = re.compile("|".join(f"(?:{pattern})" for pattern in args.exclude)) if args.exclude else None
    kept = [(root, p) for root, p in pairs if not (exclude and exclude.search(str(p)))]
    counts.files, counts.excluded = len(kept), len(pairs) - len(kept)
    pairs = kept
    rng = np.random.default_rng([args.seed, zlib.crc32(domain.name.encode())])
    return [pairs[i] for i in rng.permutation(len(pairs))]


def build_domain(domain: Domain, args: CorpusArgs,
                 seen: set[str]) -> tuple[list[dict], list[dict], DomainCounts]:
    """(memory rows, prompt rows, counts) of one domain; `seen` holds content keys across domains."""
    counts = DomainCounts(domain.package, [str(r) for r in domain.roots])
    if not any(root.exists() for root in domain.roots):
        counts.skipped = f"none of {', '.join(counts.roots)} exists; supplied by: {domain.package}"
        return [], [], counts
    memory: list[dict] = []
    prompts: list[dict] = []
    window = args.prompt_bytes + args.continuation_bytes
    cap = args.max_memory_docs_per_domain or float("inf")
    byte_cap = args.max_memory_bytes_per_domain or float("inf")
    full = False                                    # the memory has reached a cap
    ids: set[str] = set()
    for root, path in domain_order(domain, args, counts):
        full = full or len(memory) >= cap
        if len(prompts) >= args.prompts_per_domain and full:
            break
        counts.read += 1
        try:
            text = truncate(normalise(domain.read(path)), args.max_doc_bytes)
        except (OSError, ValueError, EOFError, zlib.error):   # bad gzip, binary data
            counts.unreadable += 1
            continue
        keys = content_keys(text, window)
        if seen.intersection(keys):
            counts.duplicates += 1
            continue
        size = len(text.encode("utf-8"))
        doc_id = f"{domain.name}/{root.name}/{path.relative_to(root)}"
        while doc_id in ids:
            doc_id += "+"
        row = {"id": doc_id, "domain": domain.name, "source": str(path)}
        if len(prompts) < args.prompts_per_domain and size >= window:
            prompt, continuation = split_prompt(text, args.prompt_bytes, args.continuation_bytes)
            prompts.append({**row, "prompt": prompt, "continuation": continuation})
        elif size >= args.min_memory_bytes and not full and counts.memory_bytes + size <= byte_cap:
            memory.append({**row, "text": text})
            counts.memory_bytes += size
        else:
            full = full or size >= args.min_memory_bytes   # the first document past the byte cap: memory full
            counts.too_short += 1
            continue
        seen.update(keys)
        ids.add(doc_id)
    counts.prompts, counts.memory = len(prompts), len(memory)
    return memory, prompts, counts


def drop_leaks(prompts: list[dict], memory: list[dict], counts: dict[str, DomainCounts]) -> list[dict]:
    """The memory without documents that contain a held-out continuation verbatim (a licence
    quoted inside another package's copyright file, a page generated from the same template)."""
    haystack = "\x00".join(row["text"] for row in memory)      # one scan per prompt finds most
    needles = [n for row in prompts if (n := row["continuation"].strip()) and n in haystack]
    kept = []
    for row in memory:
        if any(n in row["text"] for n in needles):
            c = counts[row["domain"]]
            c.leaks, c.memory = c.leaks + 1, c.memory - 1
            c.memory_bytes -= len(row["text"].encode("utf-8"))
        else:
            kept.append(row)
    return kept


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """One JSON object a line (UTF-8, not ASCII-escaped), all or nothing."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _check_args(args: CorpusArgs, domains: dict[str, Domain]) -> None:
    unknown = [name for name in args.domains if name not in domains]
    if unknown:
        raise ValueError(f"--domains: unknown domain(s) {unknown}; choose from {sorted(domains)}")
    if set(args.sources) - set(domains):
        raise ValueError(f"--source: unknown domain(s) {sorted(set(args.sources) - set(domains))}; "
                         f"choose from {sorted(domains)}")
    if args.prompt_bytes < 2 or args.continuation_bytes < 2:
        raise ValueError("--prompt-bytes and --continuation-bytes must be at least 2")
    if "math" in args.domains and (args.math_problems < 1 or args.math_per_doc < 1 or not args.math_modules):
        raise ValueError("--math-problems and --math-per-doc must be at least 1 and --math-modules name one")
    if args.max_memory_docs_per_domain < 0 or args.max_memory_bytes_per_domain < 0:
        raise ValueError("--max-memory-docs-per-domain and --max-memory-mb-per-domain must be at least 0 "
                         "(0: no limit)")


def prepare_sources(args: CorpusArgs) -> CorpusArgs:
    """`args` with the roots of the requested archive and math domains that --source does not give:
    the pinned archives extracted into --cache (downloaded once), the math problems generated there."""
    sources = dict(args.sources)
    for name in args.domains:
        if name in DOMAIN_ARCHIVES and name not in sources:
            sources[name] = [prepare_archive(args.cache, PINNED[DOMAIN_ARCHIVES[name]])]
    if "math" in args.domains and "math" not in sources:
        sources["math"] = [prepare_math(args.cache, args.seed, args.math_problems, args.math_modules,
                                        args.math_per_doc)]
    return replace(args, sources=sources)


def _report_domain(name: str, c: DomainCounts, args: CorpusArgs, seconds: float) -> None:
    if c.prompts < args.prompts_per_domain:
        print(f"warning: domain {name!r} has only {c.prompts} documents long enough to hold out "
              f"(--prompts-per-domain {args.prompts_per_domain})")
    print(f"{name:<10} | {c.files:>6} files | read {c.read:>5} | dup {c.duplicates:>4} | short "
          f"{c.too_short:>4} | memory {c.memory:>5} | prompts {c.prompts:>3} | {seconds:.1f} s")


def build_corpus(args: CorpusArgs, domains: dict[str, Domain] | None = None) -> dict[str, DomainCounts]:
    """Build the corpus into args.out; returns the counts per domain (also saved in corpus.json)."""
    _check_args(args, domains or default_domains(args.sources))
    given = set(args.sources) if domains is None else set(domains)  # roots not fixed by a pin
    if domains is None:
        args = prepare_sources(args)
    domains = domains or default_domains(args.sources)
    memory: list[dict] = []
    prompts: list[dict] = []
    counts: dict[str, DomainCounts] = {}
    seen: set[str] = set()
    for name in args.domains:
        start = time.perf_counter()
        rows, held_out, counts[name] = build_domain(domains[name], args, seen)
        if counts[name].skipped:
            print(f"skipping domain {name!r}: {counts[name].skipped}")
            continue
        _report_domain(name, counts[name], args, time.perf_counter() - start)
        memory += rows
        prompts += held_out
    memory = drop_leaks(prompts, memory, counts)
    args.out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(args.out / "memory.jsonl", memory)
    _write_jsonl(args.out / "prompts.jsonl", prompts)
    built = [name for name, c in counts.items() if not c.skipped]
    pins = corpus_pins(memory, prompts, math_env="math" in built,
                       pinned_by=domain_pins([name for name in built if name not in given]))
    write_text_atomic(args.out / "pins.json", json.dumps(pins, indent=2) + "\n")
    config = {k: v for k, v in asdict(args).items() if k != "out"}
    config["sources"] = {k: [str(p) for p in v] for k, v in args.sources.items()}
    summary = {"seed": args.seed, "args": config, "domains": {k: asdict(v) for k, v in counts.items()},
               "memory": len(memory), "prompts": len(prompts), "memory_sha256": pins["memory_sha256"],
               "prompts_sha256": pins["prompts_sha256"]}
    write_text_atomic(args.out / "corpus.json", json.dumps(summary, indent=2, default=str) + "\n")
    return counts


def print_table(counts: dict[str, DomainCounts]) -> None:
    """The counts as a Markdown table, as in BENCHMARKS.md."""
    print("| domain | files | read | duplicates | too short | memory docs | memory MB | prompts | leaks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, c in counts.items():
        if c.skipped:
            print(f"| {name} | skipped: {c.skipped} |||||||| ")
        else:
            print(f"| {name} | {c.files:,} | {c.read:,} | {c.duplicates:,} | {c.too_short:,} | "
                  f"{c.memory:,} | {c.memory_bytes / 1e6:.1f} | {c.prompts} | {c.leaks} |")
