"""HTML -> plain text: `html_to_text`, for the corpus's "docs" domain (Sphinx pages)."""

from __future__ import annotations

import re
from html.parser import HTMLParser


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
