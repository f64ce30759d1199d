"""Docker's word processing for Dockerfile arguments: quotes, escapes and ``$`` variable substitution."""

from __future__ import annotations

import re
from collections.abc import Callable

from corral.templates.instructions import Problem

_NAME = re.compile(r"\d+|[@*#?$!-]|\w+")  # BuildKit: digits, one special parameter, or a name

Lookup = Callable[[str], "str | None"]


def first_word(text: str, escape: str) -> tuple[str, str]:
    """The first whitespace-delimited word of ``text`` as written (quotes and escapes kept), and the rest."""
    text = text.lstrip()
    i, quote = 0, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                i += 1
        elif ch.isspace():
            break
        elif ch in "'\"":
            quote = ch
        elif ch == escape:
            i += 1
        i += 1
    return text[:i], text[i:]


def raw_words(text: str, escape: str) -> list[str]:
    words = []
    while text.strip():
        word, text = first_word(text, escape)
        words.append(word)
    return words


class Lexer:
    """Docker's word processing: quotes, escapes and ``$`` substitution; splitting on unquoted blanks."""

    def __init__(self, text: str, escape: str, lookup: Lookup, heredoc: bool = False) -> None:
        self.s, self.i, self.escape, self.lookup, self.heredoc = text, 0, escape, lookup, heredoc

    def words(self, split: bool) -> list[str]:
        words: list[str] = []
        self._run(words, split, stop="")
        return words if split else ["".join(words)]

    def _peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def _next(self) -> str:
        ch = self._peek()
        self.i += 1
        return ch

    def _run(self, words: list[str], split: bool, stop: str) -> None:
        """Process up to ``stop`` (or the end) into ``words``: one word unless ``split``."""
        cur: list[str] = []

        def add(text: str, expanded: bool = False) -> None:
            if split and expanded:  # an unquoted $VAR's value splits on blanks too
                for ch in text:
                    flush() if ch.isspace() else cur.append(ch)
            else:
                cur.append(text)

        def flush() -> None:
            if word := "".join(cur):  # as in BuildKit, empty words ("") are dropped
                words.append(word)
            cur.clear()

        while True:
            ch = self._peek()
            if ch == "":
                if stop:
                    raise Problem(f"missing '{stop}' in a ${{...}} substitution")
                break
            if stop and ch == stop:
                self.i += 1
                break
            if ch == self.escape:
                self.i += 1
                nxt = self._next()
                if self.heredoc and nxt not in ("$", self.escape):
                    add(ch + nxt)
                elif nxt:
                    add(nxt)
            elif ch == "'" and not self.heredoc:
                add(self._single())
            elif ch == '"' and not self.heredoc:
                add(self._double())
            elif ch == "$":
                add(self._dollar(), expanded=True)
            else:
                self.i += 1
                if split and ch.isspace():
                    flush()
                else:
                    add(ch)
        flush() if split else words.append("".join(cur))

    def _single(self) -> str:
        end = self.s.find("'", self.i + 1)
        if end < 0:
            raise Problem("unexpected end of statement while looking for matching single-quote")
        text, self.i = self.s[self.i + 1:end], end + 1
        return text

    def _double(self) -> str:
        self.i += 1
        out = []
        while (ch := self._peek()) != '"':
            if ch == "":
                raise Problem("unexpected end of statement while looking for matching double-quote")
            if ch == "$":
                out.append(self._dollar())
                continue
            self.i += 1
            if ch == self.escape and self._peek() in ('"', "$", self.escape):
                ch = self._next()
            out.append(ch)
        self.i += 1
        return "".join(out)

    def _dollar(self) -> str:
        self.i += 1
        braced = self._peek() == "{"
        self.i += braced
        m = _NAME.match(self.s, self.i)
        if braced and self._peek() == "":
            raise Problem("missing '}' in a ${...} substitution")
        if m is None:
            if braced:
                raise Problem("bad substitution: ${ must be followed by a variable name")
            return "$"
        name, self.i = m[0], m.end()
        value = self.lookup(name)
        if not braced:
            return value or ""
        op = self._next()
        if op == "}":
            return value or ""
        colon = op == ":"
        op = self._next() if colon else op
        if not op:
            raise Problem("missing '}' in a ${...} substitution")
        if op not in ("-", "+", "?"):
            raise Problem(f"unsupported modifier ({':' if colon else ''}{op}) in ${{{name}...}}: Corral supports "
                           ":-, -, :+, +, :? and ?")
        sub: list[str] = []
        self._run(sub, False, stop="}")
        word = "".join(sub)
        is_set = value is not None and (value != "" or not colon)
        if op == "-":
            return value if is_set and value is not None else word
        if op == "+":
            return word if is_set else ""
        if value is None:
            raise Problem(f"{name}: {word or 'is not allowed to be unset'}")
        if not is_set:
            raise Problem(f"{name}: {word or 'is not allowed to be empty'}")
        return value
