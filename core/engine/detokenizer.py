"""Token bytes -> streamable text, one token at a time.

Two things make naive streaming wrong. A token is a byte string that may end inside a
UTF-8 character (emoji, CJK: several tokens per character), so each piece is fed to an
incremental decoder that only releases complete characters. And a stop string may span
several tokens, so text that could still be the start of a stop string is held back
until it is known not to be; a stop string, once complete, is cut with everything
after it. The client therefore never sees half a character or half a stop string.
"""

from __future__ import annotations

import codecs
from typing import Sequence


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest complete stop string in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


class TextStream:
    """Feed token bytes with `push`, emit what it returns; call `flush` at the end."""

    def __init__(self, stops: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def push(self, piece: bytes) -> str:
        """Text that is safe to emit after `piece`; sets `stopped` on a stop string."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(piece)
        if not self._stops:
            out, self._pending = self._pending, ""
            return out
        cut = find_stop(self._pending, self._stops)
        if cut >= 0:
            out, self._pending = self._pending[:cut], ""
            self.stopped = True
            return out
        keep = held_back(self._pending, self._stops)
        out = self._pending[:len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep:]
        return out

    def flush(self) -> str:
        """The rest at the end of generation: held-back text was not a stop after all,
        and a dangling partial character becomes U+FFFD rather than vanishing."""
        if self.stopped:
            return ""
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return out
