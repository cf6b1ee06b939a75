"""logfmt lines: what the processes print and what tests parse back."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.logfmt import format_line, matches, parse


def test_line_is_event_first_then_fields_in_the_order_given() -> None:
    line = format_line("disconnect", kind="heartbeat_timeout", code=1006, shard=3)
    assert line == "event=disconnect kind=heartbeat_timeout code=1006 shard=3"


def test_none_is_written_as_a_dash() -> None:
    assert format_line("x", session=None) == "event=x session=-"


def test_floats_are_written_with_three_decimals() -> None:
    assert format_line("x", a=1.23456, b=2.0, c=0.0005, d=-3.0) == (
        "event=x a=1.235 b=2.000 c=0.001 d=-3.000"
    )


def test_bools_are_written_true_and_false() -> None:
    assert format_line("x", a=True, b=False) == "event=x a=true b=false"


def test_values_with_spaces_quotes_equals_or_newlines_are_quoted_and_escaped() -> None:
    line = format_line("x", reason='say "hi"\nnow', expr="a=b", empty="")
    assert line == 'event=x reason="say \\"hi\\"\\nnow" expr="a=b" empty=""'
    assert "\n" not in line  # one record, one line


def test_parse_returns_strings() -> None:
    assert parse(format_line("x", n=3, ok=True, t=1.5, s=None)) == {
        "event": "x",
        "n": "3",
        "ok": "true",
        "t": "1.500",
        "s": "-",
    }


def test_parse_keeps_a_leading_ts_field_as_just_another_key() -> None:
    line = "ts=2024-05-01T12:00:00.123Z " + format_line("ready", port=8080, note="a b")
    assert parse(line) == {
        "ts": "2024-05-01T12:00:00.123Z",
        "event": "ready",
        "port": "8080",
        "note": "a b",
    }


def test_parse_gives_up_on_lines_that_are_not_logfmt() -> None:
    assert parse("Traceback (most recent call last):") == {}
    assert parse("    raise ValueError(x=1)") == {}
    assert parse("") == {}


KEYS = st.from_regex(r"[a-z_]+", fullmatch=True).filter(lambda k: k != "event")
SPECIAL = st.sampled_from(
    [
        " ",
        '"',
        "=",
        "\n",
        "\r",
        "\t",
        "\\",
        "\\n",
        '\\"',
        "-",
        "\x00",
        "\x1b",
        "\x85",
        "\u2028",
        "\u2029",
        "\\u2028",
        "\x7f",
    ]
)
VALUES = st.lists(
    st.text(alphabet=string.printable, max_size=8)
    | st.text(max_size=4)  # any unicode (no surrogates)
    | SPECIAL,
    max_size=6,
).map("".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=VALUES, fields=st.dictionaries(KEYS, VALUES, max_size=8))
def test_parse_inverts_format_line_for_any_printable_values(
    event: str, fields: dict[str, str]
) -> None:
    line = format_line(event, **fields)
    assert len(line.splitlines()) == 1  # one record, one line, for any line splitter
    parsed = parse(line)
    assert parsed == {"event": event, **fields}
    assert list(parsed) == ["event", *fields]


def test_matches_compares_event_and_fields_as_text() -> None:
    line = parse(format_line("shard_exit", shard=3, returncode=-9))
    assert matches(line, "shard_exit")
    assert matches(line, "shard_exit", shard=3, returncode="-9")
    assert not matches(line, "shard_spawn", shard=3)
    assert not matches(line, "shard_exit", shard=4)
    assert not matches(line, "shard_exit", pid=1)  # a field the line does not have


def test_every_control_character_is_escaped_so_no_reader_sees_a_forged_line() -> None:
    # A client-chosen close reason with a CR would otherwise start a forged
    # "event=shard_exit" record for readers that split on universal newlines.
    forged = "bye\revent=shard_exit shard=0\u2028x\x85y\x0bz\x1c"
    line = format_line("disconnect", reason=forged)
    assert line.splitlines() == [line]
    assert line.isprintable()
    assert parse(line) == {"event": "disconnect", "reason": forged}
