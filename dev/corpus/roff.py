"""roff (man page) -> plain text: `roff_to_text`, for the corpus's "man" domain."""

from __future__ import annotations

import re

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
_ROFF_BREAKS = {"br", "RS", "RE", "nf", "fi", "EX", "EE", "Vb", "Ve", "TS", "TE"}   # Vb/Ve: pod2man


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


def _mdoc_words(calls: list[tuple[str, list[str]]], page: str | None) -> list[str]:
    """The words of a line of mdoc macro calls, punctuation attached to the word before it."""
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
    return words


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
    return " ".join(_mdoc_words(calls, page))


class _RoffReader:
    """The state of `roff_to_text` while it reads a page line by line."""

    def __init__(self) -> None:
        self.lines: list[str] = []      # finished output lines
        self.words: list[str] = []      # the paragraph being filled
        self.fill, self.own_line = True, False   # own_line: the next text is a .TP tag or a heading
        self.skip_definition, self.open_braces = False, 0
        self.page: str | None = None    # the .Nm name once .Dd or .Sh shows an mdoc page
        self.table, self.table_format = False, False   # inside .TS/.TE; reading its format lines

    def flush(self, *then: str) -> None:
        if self.words:
            self.lines.append(" ".join(self.words))
            self.words.clear()
        self.lines.extend(then)

    def add(self, text: str) -> None:
        if not self.fill or self.own_line:
            self.flush(text)
            self.own_line = False
        elif text.strip():
            self.words.append(text.strip())
        else:
            self.flush("")

    def line(self, line: str) -> None:
        if self.table_format:   # tbl options and column formats, up to the line ending in "."
            self.table_format = not line.rstrip().endswith(".")
        elif self.skip_definition:
            self.skip_definition = not line.startswith("..")
        elif self.open_braces:
            self.open_braces = max(0, self.open_braces + line.count("\\{") - line.count("\\}"))
        elif line[:1] not in {".", "'"}:
            self.add(_unescape_roff(re.sub(r"T[{}]", "", line) if self.table else line))
        else:
            name, _, rest = line[1:].strip().partition(" ")
            args = [_unescape_roff(q.replace('""', '"') if q else w) for q, w in _ROFF_ARG.findall(rest)]
            self.request(name, args, line)

    def request(self, name: str, args: list[str], line: str) -> None:
        """A request or macro line: `.name args...`."""
        if name in {"de", "de1", "am", "ig"}:
            self.skip_definition = True
        elif name in {"if", "ie", "el", "while"}:
            self.open_braces = max(0, line.count("\\{") - line.count("\\}"))
        elif name == "TH":
            self.flush(f"{args[0]}({args[1]})" if len(args) > 1 else " ".join(args))
        elif name == "Dd":
            self.page = self.page or ""
        elif name in {"SH", "SS", "Sh", "Ss"}:
            self.page = "" if name == "Sh" and self.page is None else self.page
            self.flush("", *([" ".join(args)] if args else []))
            self.own_line = not args
        elif name in {"IP", "It"} and args:
            self.flush("", _inline_text("It", args, self.page) if name == "It" else args[0])
        elif name in _ROFF_PARAGRAPH:
            self.flush("")
            self.own_line = name in {"TP", "TQ", "It"}
        elif name in _ROFF_BREAKS:
            self.flush()
            if name not in {"br", "RS", "RE"}:
                self.fill = name in {"fi", "EE", "Ve", "TE"}
            if name in {"TS", "TE"}:
                self.table = self.table_format = name == "TS"
        elif name in {"UR", "MT"} and args:
            self.add(args[0])
        elif (text := _inline_text(name, args, self.page)) is not None:
            if name == "Nm" and args and self.page == "":
                self.page = args[0]
            self.add(text)


def roff_to_text(source: str) -> str:
    """Plain text of a man page in roff (man or mdoc macros), filled into paragraphs as groff
    would, without indentation: macro definitions, conditionals, fonts, registers and other
    requests dropped; special characters mapped; .nf/.EX blocks kept line by line."""
    reader = _RoffReader()
    source = re.sub(r"(?<!\\)((?:\\\\)*)\\\n", r"\1", source)     # a backslash at the end joins lines
    for line in source.splitlines():
        reader.line(line)
    reader.flush()
    return "\n".join(reader.lines)
