"""The HTTP side of a WebSocket connection: request head, route, opening handshake.

h11 is the oracle for the grammar: whatever ``parse_head`` accepts, h11 accepts and reads
the same way (``parse_head`` is stricter where h11 is lenient: bare LF, obs-fold). Arbitrary
bytes end in a ``Request``/``Target``/``Upgrade`` or an ``HttpError`` - nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import string
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.events import AcceptConnection
from wsproto.events import Request as WsRequest
from wsproto.handshake import H11Handshake

from core.handshake import (
    MAX_HEAD,
    MAX_HEADERS,
    HttpError,
    Request,
    Target,
    Upgrade,
    head_end,
    http_response,
    is_upgrade,
    parse_head,
    route,
    upgrade,
)

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
ORIGIN = "https://game.example"
BROWSER = {
    "Host": "game.example:8080",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64)",
    "Upgrade": "websocket",
    "Connection": "keep-alive, Upgrade",
    "Sec-WebSocket-Key": SAMPLE_KEY,
    "Sec-WebSocket-Version": "13",
    "Origin": ORIGIN,
}


def head_of(
    target: str = "/",
    *,
    method: str = "GET",
    version: str = "HTTP/1.1",
    headers: dict[str, str] | None = None,
    drop: tuple[str, ...] = (),
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A browser's upgrade request, changed as asked."""
    fields = {**BROWSER, **(headers or {})}
    lines = [f"{method} {target} {version}"]
    lines += [f"{k}: {v}" for k, v in fields.items() if k not in drop]
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def serve(data: bytes, allowed_origins: tuple[str, ...] = ()) -> tuple[Target, Upgrade]:
    """What a shard does with the bytes it read: head, route, upgrade."""
    end = head_end(data)
    assert end != -1, "incomplete head"
    request = parse_head(data[:end])
    return route(request.target), upgrade(request, allowed_origins)


def refusal(data: bytes, allowed_origins: tuple[str, ...] = ()) -> HttpError:
    with pytest.raises(HttpError) as info:
        serve(data, allowed_origins)
    return info.value


def h11_request(head: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    event = conn.next_event()
    assert isinstance(event, h11.Request), event
    return event


def joined(headers: Any) -> dict[str, str]:
    """h11's header list as ``parse_head`` reports it: lower-case, repeats joined."""
    out: dict[str, str] = {}
    for name, value in headers:
        key, text = name.decode().lower(), value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


# ===================================================================== h11 as an oracle
TCHARS = "!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits
VCHARS = "".join(chr(c) for c in range(0x21, 0x7F))
NASTY = ["\x00", "\x01", "\x0b", "\x7f", "\x80", "\xff", "\r", "\n", "\t", " ", ":", "\r\n"]


def pieces(pool: list[str], max_size: int) -> st.SearchStrategy[str]:
    """Text made of ``pool``'s pieces (some are two characters, like CRLF)."""
    return st.lists(st.sampled_from(pool), max_size=max_size).map("".join)


# Each part of a random head is usually well-formed and sometimes not (one odd part is
# enough for a refusal, so odd parts must be rare for h11 to get heads to compare).
METHODS = st.sampled_from(["GET", "POST", "OPTIONS", "get", "M-SEARCH", "X!#$%&'*+.^_`|~"])
ODD_METHODS = pieces(list(TCHARS[:20]) + NASTY, 6)
TARGETS = st.sampled_from(
    ["/", "/rooms/abc?resume=T&last_seq=5", "*", "http://x.example/", "//[", "/a%20b"]
)
ODD_TARGETS = st.just("/\xe9") | pieces(list("/?=&%az09[]") + NASTY, 12)
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0"])
ODD_VERSIONS = st.sampled_from(["HTTP/2.0", "HTTP/0.9", "http/1.1", "HTTP/11", "HTTP/1.1 ", ""])
NAMES = st.sampled_from(
    ["Upgrade", "Connection", "Origin", "Accept", "X-A", "x-a", "Sec-WebSocket-Protocol"]
)
ODD_NAMES = st.sampled_from(
    ["Host", "Content-Length", "Transfer-Encoding", "Sec-WebSocket-Key", "Bad Name", ""]
) | pieces(list(TCHARS[:10]) + NASTY, 8)
VALUES = st.sampled_from(["a", "websocket", "0", "1", "", "x, y", "keep-alive, Upgrade", "\xe9"])
ODD_VALUES = pieces(list("ab ,=;") + NASTY + ["\xe9"], 12)
OWS = st.sampled_from(["", "", " ", "\t", "  ", " \t"])
ODD_EOLS = st.sampled_from(["\n", "\r", "\n\r"])


@st.composite
def random_heads(draw: st.DrawFn) -> bytes:
    """Request heads from random methods, targets, names, values and line endings,
    with obs-fold, control characters and repeated fields now and then."""

    def part(usual: st.SearchStrategy[str], odd: st.SearchStrategy[str], one_in: int) -> str:
        return draw(odd if draw(st.integers(1, one_in)) == 1 else usual)

    def eol() -> str:
        return part(st.just("\r\n"), ODD_EOLS, 20)

    text = (
        f"{part(METHODS, ODD_METHODS, 10)} {part(TARGETS, ODD_TARGETS, 10)} "
        f"{part(VERSIONS, ODD_VERSIONS, 10)}{eol()}"
    )
    fields = [
        (part(NAMES, ODD_NAMES, 12), part(VALUES, ODD_VALUES, 8))
        for _ in range(draw(st.integers(0, 6)))
    ]
    if draw(st.integers(0, 3)):
        fields.append((draw(st.sampled_from(["Host", "host", "HOST"])), "example.com"))
    if fields and draw(st.booleans()):
        fields.append(draw(st.sampled_from(fields)))  # a repeated field
    for name, value in draw(st.permutations(fields)):
        text += f"{name}:{draw(OWS)}{value}{draw(OWS)}{eol()}"
        if draw(st.integers(1, 20)) == 1:
            text += f"{draw(st.sampled_from([' ', chr(9)]))}folded{eol()}"  # obs-fold
    text += part(st.just("\r\n"), st.sampled_from(["\n", ""]), 20)
    return text.encode("latin-1")


FIELD_VALUES = st.text(alphabet=VCHARS + "\x80\xe9\xff", min_size=1, max_size=10)


@st.composite
def valid_heads(draw: st.DrawFn) -> bytes:
    """Heads RFC 9112 allows: CRLF, token names, plain values, one Host, no body."""
    method = draw(st.text(alphabet=TCHARS, min_size=1, max_size=8))
    target = draw(st.text(alphabet=VCHARS, min_size=1, max_size=20))
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    value = st.lists(FIELD_VALUES, max_size=3).map(" ".join)
    forbidden = {"host", "content-length", "transfer-encoding", "sec-websocket-key"}
    name = st.text(alphabet=TCHARS, min_size=1, max_size=10).filter(
        lambda n: n.lower() not in forbidden
    )
    fields = draw(st.lists(st.tuples(name, value), max_size=6))
    fields.insert(draw(st.integers(0, len(fields))), ("Host", draw(value)))
    lines = [f"{method} {target} {version}"]
    lines += [f"{n}:{draw(OWS)}{v}{draw(OWS)}" for n, v in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@PROPERTY
@given(data=random_heads())
def test_whatever_parse_head_accepts_h11_accepts_the_same_way(data: bytes) -> None:
    try:
        end = head_end(data)
        if end == -1:
            return
        request = parse_head(data[:end])
    except HttpError as error:
        assert 400 <= error.status <= 505
        event(f"refused {error.status} {error.reason[:30]}")
        return
    event("accepted")
    got = h11_request(data[:end])
    assert got.method.decode() == request.method
    assert got.target.decode() == request.target
    assert got.http_version.decode() == request.version
    assert joined(got.headers) == request.headers


@settings(PROPERTY, max_examples=100)
@given(data=valid_heads())
def test_parse_head_accepts_every_valid_head_and_reads_it_like_h11(data: bytes) -> None:
    assert head_end(data) == len(data)
    request = parse_head(data)
    got = h11_request(data)
    assert (request.method, request.target, request.version) == (
        got.method.decode(),
        got.target.decode(),
        got.http_version.decode(),
    )
    assert request.headers == joined(got.headers)


def test_repeated_fields_are_joined_in_order_with_comma_space() -> None:
    request = parse_head(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a: 2\r\nSec-WebSocket-Protocol: json\r\n"
        b"sec-websocket-protocol: msgpack\r\n\r\n"
    )
    assert request.headers == {
        "host": "a",
        "x-a": "1, 2",
        "sec-websocket-protocol": "json, msgpack",
    }
    assert request.header_tokens("sec-websocket-protocol") == ["json", "msgpack"]


def test_field_values_lose_their_surrounding_whitespace_and_keep_inner_spaces() -> None:
    request = parse_head(b"GET / HTTP/1.1\r\nHost:\t a  b \t\r\nX-Empty:\r\n\r\n")
    assert request.headers == {"host": "a  b", "x-empty": ""}


# ===================================================================== never another error
def pipeline(data: bytes) -> None:
    """Every step a shard takes with a client's bytes; only HttpError may come out."""
    try:
        parse_head(data)
    except HttpError as error:
        assert_http_error(error)
    try:
        end = head_end(data)
        if end == -1:
            return
        request = parse_head(data[:end])
        try:
            route(request.target)
        except HttpError as error:
            assert_http_error(error)
        is_upgrade(request)
        upgrade(request, allowed_origins=(ORIGIN,))
    except HttpError as error:
        assert_http_error(error)


def assert_http_error(error: HttpError) -> None:
    assert 400 <= error.status <= 505
    assert error.kind
    response = error.response()
    assert response.startswith(f"HTTP/1.1 {error.status} ".encode())


@st.composite
def mutated_upgrades(draw: st.DrawFn) -> bytes:
    """A browser's upgrade with a few bytes overwritten, inserted or deleted."""
    data = bytearray(head_of(draw(st.sampled_from(["/", "/rooms/abc?resume=T&last_seq=5"]))))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        byte = draw(st.integers(0, 255))
        how = draw(st.sampled_from(["set", "insert", "delete"]))
        if how == "set":
            data[at] = byte
        elif how == "insert":
            data.insert(at, byte)
        else:
            del data[at]
    return bytes(data)


@PROPERTY
@given(data=st.binary(max_size=300) | random_heads() | mutated_upgrades())
def test_arbitrary_bytes_end_in_a_result_or_an_http_error_and_nothing_else(data: bytes) -> None:
    pipeline(data)


@settings(max_examples=200, deadline=None)
@given(target=st.text(max_size=60) | st.text(alphabet="/?=&%+;rooms019abcAF_-", max_size=60))
def test_route_of_any_text_gives_a_target_or_an_http_error(target: str) -> None:
    try:
        got = route(target)
    except HttpError as error:
        assert error.status in (400, 404)
        return
    assert got.room is None or 1 <= len(got.room) <= 64
    assert got.token is None or got.token == "!" or got.token.isascii()
    assert -1 <= got.last_seq <= 2**63 - 1


@settings(max_examples=100, deadline=None)
@given(
    headers=st.dictionaries(
        st.sampled_from(
            [
                "upgrade",
                "connection",
                "sec-websocket-key",
                "sec-websocket-version",
                "origin",
                "sec-websocket-protocol",
            ]
        ),
        st.text(max_size=30) | st.sampled_from(["websocket", "upgrade", "13", SAMPLE_KEY]),
    ),
    method=st.sampled_from(["GET", "POST"]),
    version=st.sampled_from(["1.1", "1.0"]),
)
def test_upgrade_of_any_headers_gives_a_101_or_an_http_error(
    headers: dict[str, str], method: str, version: str
) -> None:
    request = Request(method, "/", version, headers)
    try:
        got = upgrade(request, allowed_origins=(ORIGIN,))
    except HttpError as error:
        assert error.status in (400, 403, 405, 426)
        return
    assert got.response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


# ===================================================================== named cases
def test_a_browsers_upgrade_is_accepted() -> None:
    target, accepted = serve(head_of("/"), allowed_origins=(ORIGIN,))
    assert target == Target(path="/", room=None, token=None, last_seq=0)
    assert accepted.subprotocol is None
    assert accepted.response == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + SAMPLE_ACCEPT.encode() + b"\r\n\r\n"
    )


def test_the_accept_of_the_rfc_6455_sample_key_is_the_rfcs() -> None:
    _, accepted = serve(head_of(headers={"Sec-WebSocket-Key": SAMPLE_KEY}))
    assert f"Sec-WebSocket-Accept: {SAMPLE_ACCEPT}\r\n".encode() in accepted.response


@pytest.mark.parametrize("seed", range(5))
def test_the_accept_is_sha1_of_key_and_guid_in_base64(seed: int) -> None:
    key = base64.b64encode(bytes(range(seed, seed + 16))).decode()
    expected = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    )
    _, accepted = serve(head_of(headers={"Sec-WebSocket-Key": key}))
    assert b"Sec-WebSocket-Accept: " + expected + b"\r\n" in accepted.response


def test_wsproto_as_a_client_completes_the_handshake() -> None:
    client = H11Handshake(ConnectionType.CLIENT)
    data = client.send(
        WsRequest(
            host="game.example",
            target="/rooms/abc?resume=T&last_seq=5",
            subprotocols=["json", "msgpack"],
            extra_headers=[(b"Origin", ORIGIN.encode())],
        )
    )
    target, accepted = serve(data, allowed_origins=(ORIGIN,))
    assert (target.room, target.token, target.last_seq) == ("abc", "T", 5)
    client.receive_data(accepted.response)
    assert list(client.events()) == [AcceptConnection(subprotocol="msgpack")]


def test_the_msgpack_subprotocol_is_chosen_when_offered() -> None:
    _, accepted = serve(head_of(headers={"Sec-WebSocket-Protocol": "json, msgpack"}))
    assert accepted.subprotocol == "msgpack"
    assert b"\r\nSec-WebSocket-Protocol: msgpack\r\n" in accepted.response


def test_no_subprotocol_is_chosen_when_msgpack_is_not_offered() -> None:
    _, accepted = serve(head_of(headers={"Sec-WebSocket-Protocol": "json, mqtt"}))
    assert accepted.subprotocol is None
    assert b"Sec-WebSocket-Protocol" not in accepted.response


def test_head_end_waits_for_the_blank_line() -> None:
    data = head_of()
    assert head_end(data[:-1]) == -1
    assert head_end(data[:-2]) == -1
    assert head_end(data) == len(data)
    assert head_end(data + b"\x81\x85frame") == len(data)  # bytes after the head stay
    assert head_end(b"") == -1


def test_a_9_kb_request_line_is_414() -> None:
    data = b"GET /" + b"a" * 9_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    with pytest.raises(HttpError) as info:
        head_end(data)
    assert (info.value.status, info.value.kind) == (414, "uri_too_long")
    with pytest.raises(HttpError):  # before the request line even ends
        head_end(data[:MAX_HEAD])


def test_9_kb_of_headers_is_431() -> None:
    data = head_of(extra=tuple((f"X-Pad-{i}", "p" * 80) for i in range(100)))
    assert len(data) > 9_000
    with pytest.raises(HttpError) as info:
        head_end(data)
    assert (info.value.status, info.value.kind) == (431, "headers_too_large")


def test_a_head_of_exactly_max_head_bytes_is_read() -> None:
    base = head_of()
    pad = MAX_HEAD - len(base) - len("X-Pad: \r\n")
    data = head_of(extra=(("X-Pad", "p" * pad),))
    assert len(data) == MAX_HEAD
    assert head_end(data) == MAX_HEAD
    with pytest.raises(HttpError) as info:
        head_end(head_of(extra=(("X-Pad", "p" * (pad + 1)),)))
    assert info.value.status == 431


def test_more_than_max_headers_fields_is_431() -> None:
    data = head_of(extra=tuple((f"X-{i}", "v") for i in range(MAX_HEADERS)))
    assert refusal(data).status == 431


def test_http_2_is_505() -> None:
    error = refusal(head_of(version="HTTP/2.0"))
    assert (error.status, error.kind) == (505, "http_version")


def test_a_missing_host_is_400() -> None:
    error = refusal(head_of(drop=("Host",)))
    assert (error.status, error.kind) == (400, "bad_request")
    assert "Host" in error.reason


def test_two_hosts_are_400() -> None:
    assert refusal(head_of(extra=(("Host", "evil.example"),))).status == 400


def test_obs_fold_is_400() -> None:
    data = head_of().replace(b"\r\nUpgrade: websocket", b"\r\nUpgrade:\r\n websocket")
    error = refusal(data)
    assert (error.status, error.reason) == (400, "obsolete line folding")


def test_bare_lf_line_ends_are_never_a_head() -> None:
    data = head_of().replace(b"\r\n", b"\n")
    assert head_end(data) == -1  # and at MAX_HEAD it is 414/431
    with pytest.raises(HttpError) as info:
        parse_head(data)
    assert info.value.status == 400


@pytest.mark.parametrize("value", ["a\x00b", "a\x7fb", "a\x0bb"])
def test_a_control_character_in_a_field_value_is_400(value: str) -> None:
    assert refusal(head_of(headers={"User-Agent": value})).status == 400


@pytest.mark.parametrize("field", [("Content-Length", "5"), ("Transfer-Encoding", "chunked")])
def test_a_request_body_is_400(field: tuple[str, str]) -> None:
    assert refusal(head_of(extra=(field,))).status == 400


def test_a_target_outside_origin_form_is_400_bad_request() -> None:
    error = refusal(head_of("//["))
    assert (error.status, error.kind) == (400, "bad_request")
    for target in ("*", "http://game.example/", "/a\\b"):
        assert refusal(head_of(target)).status == 400


def test_a_plain_get_is_426_not_websocket() -> None:
    error = refusal(
        b"GET / HTTP/1.1\r\nHost: game.example\r\nAccept: text/html\r\n\r\n",
    )
    assert (error.status, error.kind) == (426, "not_websocket")
    assert error.headers == ("Upgrade: websocket",)
    assert b"\r\nUpgrade: websocket\r\n" in error.response()


def test_a_post_upgrade_is_405() -> None:
    error = refusal(head_of(method="POST"))
    assert (error.status, error.kind) == (405, "method_not_allowed")


def test_an_http_1_0_upgrade_is_400() -> None:
    assert refusal(head_of(version="HTTP/1.0")).status == 400


def test_an_upgrade_without_connection_upgrade_is_400() -> None:
    assert refusal(head_of(headers={"Connection": "keep-alive"})).status == 400


@pytest.mark.parametrize(
    "key",
    ["", "not base64!", "dGhlIHNhbXBsZQ==", SAMPLE_KEY + "AAAA", "dGhlIHNhbXBsZSBub25jZQ", "é"],
)
def test_a_bad_sec_websocket_key_is_400(key: str) -> None:
    error = refusal(head_of(headers={"Sec-WebSocket-Key": key}))
    assert (error.status, error.kind) == (400, "bad_request")


def test_two_sec_websocket_keys_are_400() -> None:
    error = refusal(head_of(extra=(("Sec-WebSocket-Key", SAMPLE_KEY),)))
    assert error.status == 400


@pytest.mark.parametrize("version", ["8", "", "13, 8", "14"])
def test_another_websocket_version_is_426_naming_version_13(version: str) -> None:
    error = refusal(head_of(headers={"Sec-WebSocket-Version": version}))
    assert (error.status, error.kind) == (426, "unsupported_version")
    assert error.headers == ("Sec-WebSocket-Version: 13",)
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in error.response()


def test_an_origin_not_allowed_is_403() -> None:
    error = refusal(head_of(headers={"Origin": "https://evil.example"}), (ORIGIN,))
    assert (error.status, error.kind) == (403, "origin_not_allowed")
    assert refusal(head_of(drop=("Origin",)), (ORIGIN,)).status == 403
    serve(head_of(headers={"Origin": "https://evil.example"}))  # no list: any origin


# ------------------------------------------------------------------ route
def test_route_reads_room_token_and_last_seq() -> None:
    assert route("/rooms/abc?resume=T&last_seq=5") == Target(
        path="/rooms/abc?resume=T&last_seq=5", room="abc", token="T", last_seq=5
    )


def test_route_of_the_lobby() -> None:
    assert route("/") == Target(path="/", room=None, token=None, last_seq=0)
    assert route("/?resume=&last_seq=0").token is None  # an empty token is no token


@pytest.mark.parametrize("path", ["/rooms/" + "a" * 65, "/rooms/", "/rooms/a.b", "/nope", "/rooms"])
def test_route_of_another_path_or_a_bad_room_id_is_404(path: str) -> None:
    with pytest.raises(HttpError) as info:
        route(path)
    assert (info.value.status, info.value.kind) == (404, "not_found")


def test_route_accepts_a_room_id_of_64_characters() -> None:
    assert route("/rooms/" + "a" * 64).room == "a" * 64


@pytest.mark.parametrize(
    ("raw", "last_seq"),
    [
        ("0", 0),
        ("5", 5),
        (str(2**63 - 1), 2**63 - 1),
        (str(2**63), -1),
        (str(2**64 + 5), -1),
        ("-1", -1),
        ("1.5", -1),
        ("", -1),
        ("x", -1),
        ("%35", 5),  # percent-decoded first
    ],
)
def test_route_reads_last_seq_or_minus_one_when_it_is_not_a_seq(raw: str, last_seq: int) -> None:
    assert route(f"/?resume=T&last_seq={raw}").last_seq == last_seq


@pytest.mark.parametrize("token", ["a%20b", "a=b", "a+b", "%25", "x" * 129, "a%00"])
def test_route_turns_a_token_that_is_not_token_shaped_into_a_refused_one(token: str) -> None:
    assert route(f"/rooms/abc?resume={token}").token == "!"


def test_route_refuses_a_query_of_40_fields() -> None:
    query = "&".join(f"f{i}=1" for i in range(40))
    with pytest.raises(HttpError) as info:
        route(f"/?{query}")
    assert info.value.status == 400
    route("/?" + "&".join(f"f{i}=1" for i in range(32)))  # 32 are fine


# ------------------------------------------------------------------ responses
def test_http_response_of_503_says_retry_after_1() -> None:
    response = http_response(503, "over capacity")
    assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 1\r\n" in response
    assert response.count(b"Retry-After") == 1
    custom = http_response(503, "busy", ("Retry-After: 5",))
    assert b"Retry-After: 5" in custom and b"Retry-After: 1" not in custom


@pytest.mark.parametrize(
    ("status", "headers"),
    [(400, ()), (426, ("Upgrade: websocket",)), (429, ()), (503, ()), (499, ())],
)
def test_http_response_is_a_complete_response_h11_reads(
    status: int, headers: tuple[str, ...]
) -> None:
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(http_response(status, "why not", headers))
    response = client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == status
    fields = joined(response.headers)
    assert fields["connection"] == "close"
    assert (fields.get("retry-after") == "1") is (status == 503)
    body = client.next_event()
    assert isinstance(body, h11.Data)
    assert body.data == f"{status} why not\n".encode()
    assert isinstance(client.next_event(), h11.EndOfMessage)


def test_http_error_response_uses_its_status_reason_and_headers() -> None:
    error = HttpError(426, "this endpoint only speaks WebSocket", ("Upgrade: websocket",))
    assert error.response() == http_response(426, error.reason, error.headers)
    assert error.kind == "not_websocket"
    assert HttpError(418, "teapot").kind == "http_418"
