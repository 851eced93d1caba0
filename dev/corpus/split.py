"""Documents into text: normalising, truncating, cutting prompt and continuation, content keys."""

from __future__ import annotations

import hashlib
import re


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
