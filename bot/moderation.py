"""Moderators' content and place rules: banned words and allowed channels — pure, no I/O.

Nothing here touches the database, Discord or Segmind: the store keeps the lists, the intake
asks `BannedWords.first_match` and `channel_allowed` before anything is reserved or fetched.

## How a banned entry matches a prompt

Both the entry and the prompt go through `words()`, the entry then through `entry_key()`:

1. Unicode NFKC, case folding, NFKC again (`ｂａｄ`, `ＢＡＤ`, `ℬ𝒶𝒹`, ligatures like `ﬁ` become
   plain letters).
2. Invisible characters are removed outright, as if never typed: every format character
   (category Cf: zero-width space/joiner, soft hyphen, bidi marks…) and every non-spacing or
   enclosing mark (Mn, Me) that NFKC did not fold into its letter (strike-through, "zalgo").
   So `b<ZWSP>ad` and `b̶a̶d̶` are `bad`.
3. What is left splits into *words*: maximal runs of letters, digits and spacing marks (L, N,
   Mc). Everything else — spaces, punctuation, symbols, emoji — is a *separator*.

An entry is reduced to its key: its words one space apart, spelled-out letters joined up
(`b.a.d` is `bad`, `bad  word!` is `bad word`, `f.o.r.b.i.d.d.e.n fruit` is `forbidden
fruit`). The key's letters (its spaces dropped) match a stretch of the prompt's letters (its
separators dropped too) only when

- the stretch starts where a prompt word starts and ends where a prompt word ends (so `bad`
  never bans `badge` or `notbad`; ban `badge` too if that is meant), and
- every separator the stretch crosses is one the key has at the same place (a phrase
  `bad word` matches `bad word`, `bad-word` and `badword`), or sits next to a one-character
  word (spelled-out letters: `b.a.d`, `b a d`, `b-a-d`, `a b.a.d video`, `ba d`).

So `an al dente` does not match `anal` (two longer words), while `a n a l` does. Known limits,
on purpose: leetspeak (`b4d`) and look-alike letters from other scripts (Cyrillic `а`) are
not folded; scripts written without spaces match only whole runs of their letters.

## Cost

No entry is ever a regular expression. One Aho–Corasick automaton per list (cached) walks the
prompt's letters once; each hit is checked in O(1) with prefix sums, plus one step per
separator the entry itself has. So a check is linear in the prompt's length for a given list,
whatever the prompt holds; `MAX_ENTRIES` and `MAX_ENTRY_CHARS` bound the list.
"""

from __future__ import annotations

import unicodedata
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

MAX_ENTRIES = 200  # banned entries per guild
MAX_ENTRY_CHARS = 100  # characters in one entry, as typed
MAX_CHANNELS = 25  # allowed channels per guild: the refusal lists them all in one message

_REMOVED = frozenset({"Cf", "Mn", "Me"})
_WORD = ("L", "N")  # category prefixes of word characters; Mc (spacing marks) too, below


def _is_word_char(char: str) -> bool:
    category = unicodedata.category(char)
    return category.startswith(_WORD) or category == "Mc"


def fold(text: str) -> str:
    """NFKC + case folding, with invisible characters (Cf, Mn, Me) removed."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return "".join(c for c in folded if unicodedata.category(c) not in _REMOVED)


def words(text: str) -> list[str]:
    """The text's words after `fold`: what an entry and a prompt are compared on."""
    result: list[str] = []
    current: list[str] = []
    for char in fold(text):
        if _is_word_char(char):
            current.append(char)
        elif current:
            result.append("".join(current))
            current = []
    if current:
        result.append("".join(current))
    return result


def entry_key(entry: str) -> str:
    """An entry as it is matched, stored and told apart from the others: its words one space
    apart, each run of one-character words joined into one word (spelled-out letters:
    `b.a.d`, `B A D` and `ｂａｄ` are all `bad`, `f.o.r.b.i.d.d.e.n fruit` is `forbidden
    fruit`). "" when it has no letter or digit at all, which is refused."""
    joined: list[str] = []
    spelled = ""
    for part in words(entry):
        if len(part) == 1:
            spelled += part
            continue
        if spelled:
            joined.append(spelled)
            spelled = ""
        joined.append(part)
    if spelled:
        joined.append(spelled)
    return " ".join(joined)


@dataclass(frozen=True, slots=True)
class _Pattern:
    entry: str  # as the moderator typed it, for telling the member
    letters: str  # the key without its spaces
    breaks: tuple[int, ...]  # offsets into `letters` where the entry has a separator


@dataclass(frozen=True, slots=True)
class _Automaton:
    goto: tuple[dict[str, int], ...]
    fail: tuple[int, ...]
    # Patterns ending at each node, its own first, then those reached through fail links.
    out: tuple[tuple[int, ...], ...]


def _build(patterns: tuple[_Pattern, ...]) -> _Automaton:
    goto: list[dict[str, int]] = [{}]
    own: list[list[int]] = [[]]
    for index, pattern in enumerate(patterns):
        node = 0
        for char in pattern.letters:
            nxt = goto[node].get(char)
            if nxt is None:
                nxt = len(goto)
                goto[node][char] = nxt
                goto.append({})
                own.append([])
            node = nxt
        own[node].append(index)
    fail = [0] * len(goto)
    out: list[tuple[int, ...]] = [()] * len(goto)
    out[0] = tuple(own[0])
    queue: deque[int] = deque()
    for child in goto[0].values():
        out[child] = tuple(own[child])
        queue.append(child)
    while queue:  # breadth first: a node's fail target is always finished before it
        node = queue.popleft()
        for char, child in goto[node].items():
            target = fail[node]
            while target and char not in goto[target]:
                target = fail[target]
            fail[child] = goto[target].get(char, 0)
            out[child] = (*own[child], *out[fail[child]])
            queue.append(child)
    return _Automaton(tuple(goto), tuple(fail), tuple(out))


class BannedWords:
    """A guild's banned entries, compiled once; `first_match` says which one a prompt hits."""

    def __init__(self, entries: Iterable[str]) -> None:
        patterns: list[_Pattern] = []
        for entry in entries:
            parts = entry_key(entry).split(" ")
            if not parts[0]:
                continue
            breaks, offset = [], 0
            for part in parts[:-1]:
                offset += len(part)
                breaks.append(offset)
            patterns.append(_Pattern(entry, "".join(parts), tuple(breaks)))
        self._patterns = tuple(patterns)
        self._automaton = _build(self._patterns)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def first_match(self, prompt: str) -> str | None:
        """The entry (as typed) that the prompt matches first, by where it ends; None if none."""
        if not self._patterns:
            return None
        prompt_words = words(prompt)
        letters = "".join(prompt_words)
        starts: set[int] = set()  # letter offsets where a prompt word starts
        ends: set[int] = set()  # letter offsets just past a word's end
        # hard[b] = 1 when the boundary before letter b separates two words of 2+ letters:
        # crossing it needs the entry to have a separator there too.
        hard = [0] * (len(letters) + 1)
        offset = 0
        for i, word in enumerate(prompt_words):
            starts.add(offset)
            if i and len(word) > 1 and len(prompt_words[i - 1]) > 1:
                hard[offset] = 1
            offset += len(word)
            ends.add(offset)
        prefix = [0] * (len(hard) + 1)
        for b, value in enumerate(hard):
            prefix[b + 1] = prefix[b] + value

        automaton, patterns = self._automaton, self._patterns
        node = 0
        for position, char in enumerate(letters):
            while node and char not in automaton.goto[node]:
                node = automaton.fail[node]
            node = automaton.goto[node].get(char, 0)
            for index in automaton.out[node]:
                pattern = patterns[index]
                end = position + 1
                start = end - len(pattern.letters)
                if start not in starts or end not in ends:
                    continue
                # Hard boundaries strictly inside the stretch, less those the entry has itself.
                inside = prefix[end] - prefix[start + 1]
                if inside and inside > sum(hard[start + b] for b in pattern.breaks):
                    continue
                return pattern.entry
        return None


@lru_cache(maxsize=256)
def compiled(entries: tuple[str, ...]) -> BannedWords:
    """The compiled list, shared while a guild's entries stay the same (a tuple, in order)."""
    return BannedWords(entries)


def channel_allowed(allowed: frozenset[int], channel_id: int, parent_id: int | None) -> bool:
    """The bot works in a guild's listed channels only, once it lists any; a thread counts as
    its parent channel (`parent_id`)."""
    if not allowed:
        return True
    return channel_id in allowed or (parent_id is not None and parent_id in allowed)
