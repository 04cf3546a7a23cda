"""Infilling templates: text with gaps to fill, each gap written `{{N}}` for N tokens to generate.

    The king {{8}} the queen.{{4}}

A literal `{{` is written `\\{{`. A template holds at least one gap; a `{{` that is not an escaped brace pair
and not a complete gap (`{{` digits `}}`) is an error. The text between gaps is encoded piece by piece, so the
given tokens are exactly the pieces' tokens and a gap is exactly N new tokens.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dimba.errors import DimbaError

_GAP = re.compile(r"\{\{\s*(\d+)\s*\}\}")


@dataclass
class Template:
    """A parsed template: the text pieces around the gaps (len(gaps) + 1 of them) and each gap's length."""

    pieces: list[str]
    gaps: list[int]

    def encode(self, encode) -> tuple[list[int], list[bool]]:
        """(token ids with 0 in the gaps, given mask) with encode(str) -> list[int] for the text pieces."""
        ids, given = [], []
        for i, piece in enumerate(self.pieces):
            piece_ids = encode(piece) if piece else []
            ids += piece_ids
            given += [True] * len(piece_ids)
            if i < len(self.gaps):
                ids += [0] * self.gaps[i]
                given += [False] * self.gaps[i]
        return ids, given

    def fills(self, ids: list[int], given: list[bool], decode) -> list[str]:
        """The text of each gap in a filled sequence."""
        spans, current, inside = [], [], False
        for token, known in zip(ids, given, strict=True):
            if not known:
                current.append(token)
                inside = True
            elif inside:
                spans.append(current)
                current, inside = [], False
        if inside:
            spans.append(current)
        return [decode(span) for span in spans]


def parse_template(text: str, max_tokens: int | None = None) -> Template:
    """Split a template into pieces and gaps; one clear DimbaError for a malformed one, or for gaps that ask for
    more than `max_tokens` tokens in all (checked before anything of a gap's size exists)."""
    pieces, gaps, piece, i = [], [], [], 0
    while i < len(text):
        if text.startswith("\\{{", i):
            piece.append("{{")
            i += 3
            continue
        if text.startswith("{{", i):
            match = _GAP.match(text, i)
            if match is None:
                close = text.find("}}", i)
                if close < 0:
                    raise DimbaError(f"unclosed placeholder at character {i + 1}: {text[i:i + 12]!r}... "
                                     "(write a gap as {{N}}, a literal {{ as \\{{)")
                raise DimbaError(f"a gap must be a number of tokens, like {{{{8}}}}; got {text[i:close + 2]!r}")
            n = int(match.group(1))
            if n < 1:
                raise DimbaError(f"a gap must be at least 1 token long; got {match.group(0)!r}")
            if max_tokens is not None and sum(gaps) + n > max_tokens:
                raise DimbaError(f"the gaps ask for {sum(gaps) + n:,} tokens, more than the model generates "
                                 f"({max_tokens:,} tokens)")
            pieces.append("".join(piece))
            gaps.append(n)
            piece, i = [], match.end()
            continue
        piece.append(text[i])
        i += 1
    pieces.append("".join(piece))
    if not gaps:
        raise DimbaError("the template has no gap to fill (write a gap as {{N}} for N tokens)")
    return Template(pieces, gaps)
