"""Incremental detokenization: UTF-8 is never split and stop strings never leak."""

from __future__ import annotations

from core.engine.detokenizer import TextStream, find_stop, held_back


def feed(stream: TextStream, pieces: list[bytes]) -> list[str]:
    return [stream.push(p) for p in pieces]


def test_multibyte_character_split_across_tokens() -> None:
    data = "é🙂x".encode()
    stream = TextStream()
    out = feed(stream, [data[i:i + 1] for i in range(len(data))])
    assert all("\ufffd" not in o for o in out)
    assert "".join(out) + stream.flush() == "é🙂x"
    # Nothing is released until a character is complete.
    assert out[0] == "" and out[1] == "é"


def test_stop_string_spanning_tokens_is_cut_and_never_emitted() -> None:
    stream = TextStream(stops=["END"])
    out = feed(stream, [b"hello E", b"N", b"D and more"])
    assert "".join(out) == "hello "
    assert stream.stopped
    assert stream.push(b"later") == "" and stream.flush() == ""


def test_held_back_text_is_released_when_it_is_not_a_stop() -> None:
    stream = TextStream(stops=["END"])
    assert stream.push(b"the E") == "the "
    assert stream.push(b"Nx") == "ENx"
    assert stream.push(b" EN") == " "
    assert stream.flush() == "EN"
    assert not stream.stopped


def test_earliest_of_several_stops_wins() -> None:
    stream = TextStream(stops=["zz", "b"])
    assert stream.push(b"a b zz") == "a "
    assert stream.stopped


def test_pure_helpers() -> None:
    assert held_back("abc", ["cd", "bcx"]) == 2
    assert held_back("abc", ["x"]) == 0
    assert find_stop("xxSTOPyySTO", ["STO", "yy"]) == 2
    assert find_stop("abc", [""]) == -1


def test_dangling_partial_character_is_replaced_at_the_end() -> None:
    stream = TextStream()
    assert stream.push("🙂".encode()[:2]) == ""
    assert stream.flush() == "\ufffd"
