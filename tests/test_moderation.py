"""The banned-word matcher and the channel rule (`bot.moderation`): pure, no Discord."""

from __future__ import annotations

import time

import pytest

from bot.moderation import BannedWords, channel_allowed, entry_key, words


@pytest.mark.parametrize(
    "prompt",
    [
        "a bad idea",
        "BAD",  # case
        "ｂａｄ",  # full-width letters (NFKC)
        "ＢＡＤ vibes",
        "ℬ𝒶𝒹 dream",  # mathematical letters: NFKC compatibility characters
        "b\u200bad",  # zero-width space
        "b\u200d\u2060a\u00add",  # zero-width joiner, word joiner, soft hyphen (all Cf)
        "b.a.d",  # dotted
        "b a d",  # spaced
        "b-a-d",  # hyphenated
        "b_a_d",
        "a b.a.d video",  # spelled out after a real one-letter word
        "b\u0336a\u0336d\u0336",  # strike-through marks (Mn) over each letter
        "so… bad!",
    ],
)
def test_obfuscated_spellings_match(prompt: str) -> None:
    assert BannedWords(["bad"]).first_match(prompt) == "bad"


@pytest.mark.parametrize(
    "prompt",
    ["badge", "a badger", "notbad", "abad", "b4d", "good", "ba dge", "an al dente"],
)
def test_no_match_inside_a_longer_word(prompt: str) -> None:
    assert BannedWords(["bad", "anal"]).first_match(prompt) is None


def test_phrases_match_whole_words_with_any_separator() -> None:
    banned = BannedWords(["Bad Word"])
    for prompt in ("a bad word here", "bad-word", "badword", "BAD\u200b WORD", "b.a.d w.o.r.d"):
        assert banned.first_match(prompt) == "Bad Word", prompt
    for prompt in ("bad words", "bad", "word", "a bad sword"):
        assert banned.first_match(prompt) is None, prompt


def test_the_entry_is_reported_as_the_moderator_typed_it_first_by_position() -> None:
    banned = BannedWords(["ZEBRA", "cat"])
    assert banned.first_match("a cat and a zebra") == "cat"
    assert banned.first_match("a zebra and a cat") == "ZEBRA"
    assert not BannedWords([])
    assert BannedWords([]).first_match("anything") is None


def test_entry_keys_fold_spellings_together() -> None:
    assert entry_key("B.A.D") == entry_key("ｂａｄ") == entry_key(" bad ") == "bad"
    assert entry_key("Bad   Word!") == "bad word"
    assert entry_key("…!") == ""  # nothing to match: refused by the store
    assert words("ﬁne Straße") == ["fine", "strasse"]  # ligature and case folding


def test_a_long_adversarial_prompt_is_checked_in_linear_time() -> None:
    # Entries sharing prefixes with a prompt of near misses: every position is a hit that the
    # boundary check must reject. A backtracking matcher would be quadratic here.
    banned = BannedWords(["a" * 99 + "b", "aa", "a" * 50 + "c", "b a d"])

    def seconds(prompt: str) -> float:
        start = time.perf_counter()
        assert banned.first_match(prompt) is None
        return time.perf_counter() - start

    seconds("a" * 1000)  # warm up
    short, long = seconds("a" * 20_000), seconds("a" * 80_000)
    assert long < 0.5  # 20 times the longest prompt /veo takes
    assert long / short < 8  # four times the text, about four times the work (not sixteen)
    spaced_short, spaced_long = seconds("ab " * 7_000), seconds("ab " * 28_000)
    assert spaced_long / spaced_short < 8


def test_channels_listed_or_their_threads_only_once_a_list_exists() -> None:
    assert channel_allowed(frozenset(), 5, None)  # no list: everywhere
    allowed = frozenset({10, 11})
    assert channel_allowed(allowed, 10, None)
    assert channel_allowed(allowed, 99, 11)  # a thread of a listed channel
    assert not channel_allowed(allowed, 12, None)
    assert not channel_allowed(allowed, 99, 12)


def test_a_spelled_out_entry_matches_the_plain_phrase_and_back() -> None:
    assert (
        entry_key("f.o.r.b.i.d.d.e.n fruit") == entry_key("Forbidden  Fruit") == ("forbidden fruit")
    )
    spelled = BannedWords(["f.o.r.b.i.d.d.e.n fruit"])
    plain = BannedWords(["forbidden fruit"])
    for prompt in ("the forbidden fruit", "f o r b i d d e n fruit", "FORBIDDEN-FRUIT"):
        assert spelled.first_match(prompt) is not None, prompt
        assert plain.first_match(prompt) is not None, prompt
    assert plain.first_match("forbidden fruitcake") is None
