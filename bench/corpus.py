"""Build an offline multi-domain benchmark corpus: a memory and held-out prompts, no document in both.

The Pile cannot be downloaded on this machine, so the SIFT benchmark (issue 5) draws its text from
what any Debian system can install. Each domain is one kind of text:

    domain      files read                                      supplied by (apt-get install ...)
    code        /usr/lib/python3.11/**/*.py, tests excluded     libpython3.11-stdlib (always present)
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
are dropped BEFORE the split, across all domains: a document is a duplicate when its whitespace-
and case-normalised text, or its prompt+continuation window, hashes like an earlier document's
(licences and changelogs repeat across packages). The first --prompts-per-domain documents long
enough for a prompt and a continuation are held out; the following documents of at least
--min-memory-bytes fill the memory, up to --max-memory-docs-per-domain. Reading stops once both
are full, so only as many files are read as needed. A held-out document gives a prompt (its first
~--prompt-bytes bytes) and a continuation (the next ~--continuation-bytes bytes), each cut before
a line break, else before a space, never shorter than half its size; prompt + continuation is
exactly the start of the document. As a check, the summary counts held-out continuations that
still occur verbatim inside some memory document ("leaks"); near-duplicates are not removed.

Outputs in --out, written atomically (temporary file, then os.replace):
    memory.jsonl    {"id", "domain", "source", "text"}
    prompts.jsonl   {"id", "domain", "source", "prompt", "continuation"}
    corpus.json     arguments, seed and counts per domain

    .venv/bin/python bench/corpus.py --out /work/scratch/corpus
    .venv/bin/python bench/corpus.py --out DIR --domains code,man --source man=/opt/man --seed 1
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import sysconfig
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Domain:
    """One kind of text: where its files live and how a file becomes plain text."""

    name: str
    """Label written to every row ("code", "man", ...)."""
    package: str
    """What to `apt-get install` when the files are missing."""
    roots: tuple[Path, ...]
    """Directories searched; missing ones are ignored, all missing skips the domain."""
    files: Callable[[Path], Iterator[Path]]
    """The documents under one root."""
    read: Callable[[Path], str]
    """A document's plain text."""


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
    prompt_bytes: int = 768
    """Target prompt size in UTF-8 bytes."""
    continuation_bytes: int = 768
    """Target continuation size in UTF-8 bytes."""
    max_doc_bytes: int = 65536
    """Documents are truncated (at a line break) to this many bytes."""
    min_memory_bytes: int = 200
    """Shorter documents are left out of the memory."""
    domains: tuple[str, ...] = ("code", "man", "licenses", "changelogs", "docs")
    """Domains to build, in this order (earlier domains win cross-domain duplicates)."""
    sources: dict[str, list[Path]] = field(default_factory=dict)
    """Per-domain root directories replacing the defaults (--source DOMAIN=PATH)."""
    exclude: tuple[str, ...] = (r"/gcloud[_.]",)
    """Regexes; files whose path matches one are not read. Default: the 16,631 generated pages of
    google-cloud-cli (Google's package, not Debian's) that would otherwise be 84% of "man"."""


@dataclass
class DomainCounts:
    """What happened to one domain's files."""

    package: str
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
    the memory was full."""
    prompts: int = 0
    memory: int = 0
    memory_bytes: int = 0
    leaks: int = 0
    """Memory documents dropped because a held-out continuation occurs in them verbatim."""
    skipped: str | None = None
    """Why the domain was skipped (its files are missing), else None."""


# --- reading files --------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    """A file's text, gunzipped if it ends in .gz; UTF-8, else Latin-1."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if b"\x00" in data:
        raise ValueError(f"{path} holds binary data")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_ROFF_ESCAPE = re.compile(r"""
    \\"(?P<comment>.*)                              # comment to end of line
  | \\[fF](?:\[[^\]]*\]|\(..|.)                     # font change
  | \\s(?:\[[^\]]*\]|[+-]?\(\d\d|[+-]?\d)           # size change
  | \\\*(?:\[(?P<sname>[^\]]*)\]|\((?P<s2>..)|(?P<s1>.))  # string interpolation
  | \\n[+-]?(?:\[[^\]]*\]|\(..|.)                   # number register
  | \\[hvwlLoXNbDRSxZ]'[^']*'                       # escapes with a quoted argument
  | \\[zk].                                         # escapes with a one-character argument
  | \\\((?P<c2>..) | \\\[(?P<cname>[^\]]*)\]        # special character
  | \\(?P<c1>.)                                     # one-character escape
""", re.VERBOSE)
_ROFF_ONE = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "'": "'", "`": "`",
             ".": "."}
_ROFF_CHARS = {"em": "—", "en": "–", "hy": "-", "mi": "-", "bu": "•", "lq": "“", "rq": "”",
               "oq": "‘", "cq": "’", "aq": "'", "dq": '"', "co": "©", "rg": "®", "tm": "™", "mu": "×",
               "de": "°", "<=": "≤", ">=": "≥", "->": "→", "<-": "←", "ga": "`", "ha": "^", "ti": "~",
               "rs": "\\", "sl": "/", "ba": "|", "br": "|", "pl": "+", "eq": "=", "+-": "±", "Fo": "«",
               "Fc": "»", "R": "®", "Tm": "™", "L\"": "“", "R\"": "”", "C+": "C++", "C`": "'", "C'": "'",
               "Aq": "'"}
_ROFF_PARAGRAPH = {"PP", "P", "LP", "TP", "TQ", "IP", "HP", "sp", "Sp", "Pp", "It", "Bl", "El", "Bd",
                   "Ed"}
_ROFF_JOINED = {"BR", "BI", "IR", "IB", "RB", "RI"}            # alternating fonts, no spaces
_ROFF_SPACED = {"B", "I", "SM", "SB", "It", "Nm", "Nd", "Ar", "Pa", "Em", "Sy", "Dv", "Ev", "Li", "Cm",
                "Ic", "Va", "Fn", "Ft", "Fa", "Xr", "Dq", "Sq", "Ql", "Pq", "Op", "Fl", "D1", "Dl", "Tn"}
_MDOC_CALLS = {"Fl", "Ar", "Op", "Oo", "Oc", "Ns", "Pa", "Cm", "Li", "Nm", "Xr", "Ql", "Dq", "Sq", "Pq",
               "Em", "Sy", "Ev", "Dv", "Va", "Ic", "Xo", "Xc", "No", "Fa", "Ft", "Qq", "Aq", "Sm", "Bq",
               "Brq", "Ao", "Ac", "Bo", "Bc", "Po", "Pc", "Qo", "Qc", "So", "Sc", "Do", "Dc", "Ek", "Bk"}
_MDOC_PUNCTUATION = {",", ".", ";", ":", ")", "]", "?", "!"}
_ROFF_ARG = re.compile(r'"((?:[^"]|"")*)"?|((?:\\.|\S)+)')


def _unescape_roff(text: str) -> str:
    def one(m: re.Match) -> str:
        if m["c2"] is not None or m["cname"] is not None:
            name = m["c2"] or m["cname"]
            if re.fullmatch(r"u[0-9A-Fa-f]{4,5}", name):
                return chr(int(name[1:], 16))
            return _ROFF_CHARS.get(name, "")
        if m["s1"] or m["s2"] or m["sname"]:
            return _ROFF_CHARS.get(m["s1"] or m["s2"] or m["sname"], "")
        if m["c1"] is not None:
            return _ROFF_ONE.get(m["c1"], "")
        return ""
    return _ROFF_ESCAPE.sub(one, text)


def _inline_text(name: str, args: list[str], page: str | None) -> str | None:
    """Running text of a font or mdoc macro line (.B, .BR, .Fl, ...), None for other macros.
    mdoc macros call each other on one line (".Op Fl v Ar file"); `page` is the .Nm name of an
    mdoc page (None for man pages), where any capitalised macro is taken for text."""
    if name in _ROFF_JOINED:
        return "".join(args)
    if name not in _ROFF_SPACED and not (page is not None and name[:1].isupper()):
        return None
    calls: list[tuple[str, list[str]]] = [(name, [])]
    for word in args:
        if word in _MDOC_CALLS:
            calls.append((word, []))
        else:
            calls[-1][1].append(word)
    words: list[str] = []
    for macro, ws in calls:
        if macro == "Nm" and not ws:
            ws = [page or ""]
        elif macro == "Fl":
            ws = ["-" + w if w not in _MDOC_PUNCTUATION else w for w in ws] or ["-"]
        elif macro == "Xr" and len(ws) >= 2:
            ws = [f"{ws[0]}({ws[1]})", *ws[2:]]
        elif macro == "Nd":
            ws = ["-", *ws]
        elif macro == "Sm":     # spacing mode on/off
            ws = []
        for w in ws:
            if words and w in _MDOC_PUNCTUATION:
                words[-1] += w
            else:
                words.append(w)
    return " ".join(words)


def roff_to_text(source: str) -> str:
    """Plain text of a man page in roff (man or mdoc macros), filled into paragraphs as groff
    would, without indentation: macro definitions, conditionals, fonts, registers and other
    requests dropped; special characters mapped; .nf/.EX blocks kept line by line."""
    lines: list[str] = []       # finished output lines
    words: list[str] = []       # the paragraph being filled
    fill, own_line = True, False    # own_line: the next text is a .TP tag or a heading

    def flush(*then: str) -> None:
        if words:
            lines.append(" ".join(words))
            words.clear()
        lines.extend(then)

    def add(text: str) -> None:
        nonlocal own_line
        if not fill or own_line:
            flush(text)
            own_line = False
        elif text.strip():
            words.append(text.strip())
        else:
            flush("")

    skip_definition, open_braces = False, 0
    page: str | None = None     # the .Nm name once .Dd or .Sh shows an mdoc page
    table, table_format = False, False     # inside .TS/.TE; reading its format lines
    source = re.sub(r"(?<!\\)((?:\\\\)*)\\\n", r"\1", source)     # a backslash at the end joins lines
    for line in source.splitlines():
        if table_format:    # tbl options and column formats, up to the line ending in "."
            table_format = not line.rstrip().endswith(".")
            continue
        if skip_definition:
            skip_definition = not line.startswith("..")
            continue
        if open_braces:
            open_braces = max(0, open_braces + line.count("\\{") - line.count("\\}"))
            continue
        if line[:1] not in {".", "'"}:
            add(_unescape_roff(re.sub(r"T[{}]", "", line) if table else line))
            continue
        name, _, rest = line[1:].strip().partition(" ")
        args = [_unescape_roff(q.replace('""', '"') if q else w) for q, w in _ROFF_ARG.findall(rest)]
        if name in {"de", "de1", "am", "ig"}:
            skip_definition = True
        elif name in {"if", "ie", "el", "while"}:
            open_braces = max(0, line.count("\\{") - line.count("\\}"))
        elif name == "TH":
            flush(f"{args[0]}({args[1]})" if len(args) > 1 else " ".join(args))
        elif name == "Dd":
            page = page or ""
        elif name in {"SH", "SS", "Sh", "Ss"}:
            page = "" if name == "Sh" and page is None else page
            flush("", *([" ".join(args)] if args else []))
            own_line = not args
        elif name in {"IP", "It"} and args:
            flush("", _inline_text("It", args, page) if name == "It" else args[0])
        elif name in _ROFF_PARAGRAPH:
            flush("")
            own_line = name in {"TP", "TQ", "It"}
        elif name in {"br", "RS", "RE", "nf", "fi", "EX", "EE", "Vb", "Ve", "TS", "TE"}:  # Vb/Ve: pod2man
            flush()
            if name not in {"br", "RS", "RE"}:
                fill = name in {"fi", "EE", "Ve", "TE"}
            if name in {"TS", "TE"}:
                table = table_format = name == "TS"
        elif name in {"UR", "MT"} and args:
            add(args[0])
        elif (text := _inline_text(name, args, page)) is not None:
            if name == "Nm" and args and page == "":
                page = args[0]
            add(text)
    flush()
    return "\n".join(lines)


class _HtmlText(HTMLParser):
    """Collects the text of an HTML page: the Sphinx main body if there is one, else everything."""

    BLOCKS = {"p", "div", "section", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "pre", "tr",
              "br", "table", "ul", "ol", "dl", "blockquote", "hr", "figure", "caption"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.main: list[str] = []
        self.everything: list[str] = []
        self.main_depth = 0     # nesting of <div> inside <div role="main">; 0 outside it
        self.skip_until: str | None = None    # end tag closing a <script>, <style> or headerlink
        self.pre = 0

    def _emit(self, text: str) -> None:
        for parts in (self.everything, self.main) if self.main_depth else (self.everything,):
            if not self.pre and (not parts or parts[-1].endswith("\n")):
                text = text.lstrip(" ")
            if text:
                parts.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag in {"script", "style"} or (tag == "a" and "headerlink" in (attributes.get("class") or "")):
            self.skip_until = self.skip_until or tag
        if tag == "div" and (self.main_depth or attributes.get("role") == "main"):
            self.main_depth += 1
        self.pre += tag == "pre"
        if tag in self.BLOCKS:
            self._emit("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == self.skip_until:
            self.skip_until = None
        if tag in self.BLOCKS:
            self._emit("\n")
        if tag == "div" and self.main_depth:
            self.main_depth -= 1
        if tag == "pre" and self.pre:
            self.pre -= 1

    def handle_data(self, data: str) -> None:
        if self.skip_until is None:
            self._emit(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(source: str) -> str:
    """Plain text of an HTML page (Sphinx pages: the main body only, without the ¶ links)."""
    parser = _HtmlText()
    parser.feed(source)
    parser.close()
    return "".join(parser.main or parser.everything)


# --- the domains --------------------------------------------------------------------------------

_LICENSE_NAME = re.compile(r"(copyright|licen[cs]e|copying)([-._].*)?", re.IGNORECASE)
_DOC_INDEX_PAGES = re.compile(r"(genindex.*|search|py-modindex)\.html")


def _python_files(root: Path) -> Iterator[Path]:
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    return (p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts[:-1]))


def _man_pages(root: Path) -> Iterator[Path]:
    for section in root.glob("man*"):   # man1 ... man9; translations live in /usr/share/man/<lang>
        if section.is_dir():
            yield from (p for p in section.iterdir() if p.is_file() and not p.is_symlink())


def _licence_files(root: Path) -> Iterator[Path]:
    for p in root.rglob("*"):
        if p.is_file() and (root.name == "common-licenses" or _LICENSE_NAME.fullmatch(p.name)) \
                and p.suffix not in {".py", ".pyc", ".so", ".html", ".json"}:
            yield p


def _changelogs(root: Path) -> Iterator[Path]:
    return (p for p in root.glob("*/changelog*") if p.is_file())


def _html_pages(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*.html")
            if not p.relative_to(root).parts[0].startswith("_") and not _DOC_INDEX_PAGES.fullmatch(p.name))


def default_domains(sources: dict[str, list[Path]] | None = None) -> dict[str, Domain]:
    """The five domains with this machine's default roots; `sources` replaces a domain's roots."""
    site = {Path("/usr/lib/python3/dist-packages"), Path(sysconfig.get_paths()["purelib"])}
    domains = [
        Domain("code", "libpython3.11-stdlib", (Path("/usr/lib/python3.11"),), _python_files, read_text),
        Domain("man", "manpages manpages-dev", (Path("/usr/share/man"),), _man_pages,
               lambda p: roff_to_text(read_text(p))),
        Domain("licenses", "base-files (any Debian system)",
               (Path("/usr/share/common-licenses"), Path("/usr/share/doc"), *sorted(site)),
               _licence_files, read_text),
        Domain("changelogs", "any Debian package (changelog.Debian.gz)", (Path("/usr/share/doc"),),
               _changelogs, read_text),
        Domain("docs", "python3.11-doc", (Path("/usr/share/doc/python3.11/html"),), _html_pages,
               lambda p: html_to_text(read_text(p))),
    ]
    sources = sources or {}
    return {d.name: Domain(d.name, d.package, tuple(sources[d.name]), d.files, d.read)
            if d.name in sources else d for d in domains}


# --- documents, prompts and the split --------------------------------------------------------------


def normalise(text: str) -> str:
    """Unix newlines, no control characters but tab, no trailing spaces, at most one blank line in a
    row, no blank lines at either end."""
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def cut(data: bytes, start: int, size: int) -> int:
    """End of a piece of about `size` bytes of `data` starting at `start`: the last line break in
    its second half, else the last space or tab there, else `size` bytes backed off to a UTF-8
    character boundary. The boundary character starts the next piece."""
    end = start + size
    if end >= len(data):
        return len(data)
    lo = start + max(1, size // 2)
    for boundary in (b"\n", b" ", b"\t"):
        at = data.rfind(boundary, lo, end + 1)
        if at >= 0:
            return at
    while end > start + 1 and 0x80 <= data[end] < 0xC0:   # a UTF-8 continuation byte
        end -= 1
    return end


def split_prompt(text: str, prompt_bytes: int, continuation_bytes: int) -> tuple[str, str]:
    """(prompt, continuation): the document's first ~prompt_bytes and next ~continuation_bytes."""
    data = text.encode("utf-8")
    p = cut(data, 0, prompt_bytes)
    c = cut(data, p, continuation_bytes)
    return data[:p].decode("utf-8"), data[p:c].decode("utf-8")


def truncate(text: str, max_bytes: int) -> str:
    """`text` cut to at most max_bytes UTF-8 bytes, at a line break where possible."""
    data = text.encode("utf-8")
    return text if len(data) <= max_bytes else data[:cut(data, 0, max_bytes)].decode("utf-8")


def content_keys(text: str, window_bytes: int) -> tuple[str, str]:
    """Hashes of the whitespace- and case-normalised text and of its first window_bytes bytes."""
    def key(s: str) -> str:
        return hashlib.sha1(" ".join(s.split()).casefold().encode("utf-8")).hexdigest()
    return key(text), key(text.encode("utf-8")[:window_bytes].decode("utf-8", "ignore"))


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
        counts.skipped = (f"none of {', '.join(counts.roots)} exists; "
                          f"install: apt-get install {domain.package}")
        return [], [], counts
    memory: list[dict] = []
    prompts: list[dict] = []
    window = args.prompt_bytes + args.continuation_bytes
    cap = args.max_memory_docs_per_domain or float("inf")
    ids: set[str] = set()
    for root, path in domain_order(domain, args, counts):
        if len(prompts) >= args.prompts_per_domain and len(memory) >= cap:
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
        elif size >= args.min_memory_bytes and len(memory) < cap:
            memory.append({**row, "text": text})
            counts.memory_bytes += size
        else:
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


def write_atomic(path: Path, lines: Iterator[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(tmp, path)


def build_corpus(args: CorpusArgs, domains: dict[str, Domain] | None = None) -> dict[str, DomainCounts]:
    """Build the corpus into args.out; returns the counts per domain (also saved in corpus.json)."""
    domains = domains or default_domains(args.sources)
    unknown = [name for name in args.domains if name not in domains]
    if unknown:
        raise ValueError(f"--domains: unknown domain(s) {unknown}; choose from {sorted(domains)}")
    if set(args.sources) - set(domains):
        raise ValueError(f"--source: unknown domain(s) {sorted(set(args.sources) - set(domains))}; "
                         f"choose from {sorted(domains)}")
    if args.prompt_bytes < 2 or args.continuation_bytes < 2:
        raise ValueError("--prompt-bytes and --continuation-bytes must be at least 2")
    memory: list[dict] = []
    prompts: list[dict] = []
    counts: dict[str, DomainCounts] = {}
    seen: set[str] = set()
    for name in args.domains:
        start = time.perf_counter()
        rows, held_out, counts[name] = build_domain(domains[name], args, seen)
        c = counts[name]
        if c.skipped:
            print(f"skipping domain {name!r}: {c.skipped}")
            continue
        if c.prompts < args.prompts_per_domain:
            print(f"warning: domain {name!r} has only {c.prompts} documents long enough to hold out "
                  f"(--prompts-per-domain {args.prompts_per_domain})")
        print(f"{name:<10} | {c.files:>6} files | read {c.read:>5} | dup {c.duplicates:>4} | short "
              f"{c.too_short:>4} | memory {c.memory:>5} | prompts {c.prompts:>3} "
              f"| {time.perf_counter() - start:.1f} s")
        memory += rows
        prompts += held_out
    memory = drop_leaks(prompts, memory, counts)
    args.out.mkdir(parents=True, exist_ok=True)
    dump = lambda row: json.dumps(row, ensure_ascii=False) + "\n"   # noqa: E731
    write_atomic(args.out / "memory.jsonl", map(dump, memory))
    write_atomic(args.out / "prompts.jsonl", map(dump, prompts))
    config = {k: v for k, v in asdict(args).items() if k != "out"}
    config["sources"] = {k: [str(p) for p in v] for k, v in args.sources.items()}
    summary = {"seed": args.seed, "args": config, "domains": {k: asdict(v) for k, v in counts.items()},
               "memory": len(memory), "prompts": len(prompts)}
    write_atomic(args.out / "corpus.json", iter([json.dumps(summary, indent=2, default=str) + "\n"]))
    return counts


def print_table(counts: dict[str, DomainCounts]) -> None:
    print("| domain | files | read | duplicates | too short | memory docs | memory MB | prompts | leaks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, c in counts.items():
        if c.skipped:
            print(f"| {name} | skipped: {c.skipped} |||||||| ")
        else:
            print(f"| {name} | {c.files:,} | {c.read:,} | {c.duplicates:,} | {c.too_short:,} | "
                  f"{c.memory:,} | {c.memory_bytes / 1e6:.1f} | {c.prompts} | {c.leaks} |")


def parse_args(argv: list[str] | None = None) -> CorpusArgs:
    defaults = CorpusArgs(out=Path("."))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
