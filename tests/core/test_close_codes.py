"""``classify``: every way a connection ends maps to one disconnect kind and a reconnect hint."""

from __future__ import annotations

import pytest

from core.close_codes import (
    APP_RECONNECT_RANGE,
    APP_TERMINAL_RANGE,
    CloseCode,
    Disconnect,
    DisconnectKind,
    How,
    classify,
)

GRACEFUL = DisconnectKind.GRACEFUL
ABNORMAL = DisconnectKind.ABNORMAL
POLICY = DisconnectKind.POLICY
SHUTDOWN = DisconnectKind.SHUTDOWN
APPLICATION = DisconnectKind.APPLICATION

CLOSED_BY_EITHER_SIDE = pytest.mark.parametrize("how", [How.CLIENT_CLOSED, How.SERVER_CLOSED])


@pytest.mark.parametrize("code", [1000, 1001, 1005])
def test_client_close_1000_1001_1005_is_graceful_without_reconnect(code: int) -> None:
    assert classify(code, How.CLIENT_CLOSED) == Disconnect(GRACEFUL, code, False)


def test_client_close_without_a_code_counts_as_1005_graceful() -> None:
    assert classify(None, How.CLIENT_CLOSED) == Disconnect(GRACEFUL, 1005, False)


def test_server_close_1000_is_graceful_without_reconnect() -> None:
    assert classify(1000, How.SERVER_CLOSED) == Disconnect(GRACEFUL, 1000, False)


def test_server_close_1001_is_shutdown_with_reconnect() -> None:
    assert classify(1001, How.SERVER_CLOSED) == Disconnect(SHUTDOWN, 1001, True)


@CLOSED_BY_EITHER_SIDE
def test_1012_service_restart_is_shutdown_with_reconnect(how: How) -> None:
    assert classify(1012, how) == Disconnect(SHUTDOWN, 1012, True)


@pytest.mark.parametrize("code", [None, 1000, 1001, 1006, 1008, 1012, 4000, 4999, 3000])
def test_connection_lost_is_always_abnormal_1006_with_reconnect(code: int | None) -> None:
    assert classify(code, How.CONNECTION_LOST) == Disconnect(ABNORMAL, 1006, True)


@pytest.mark.parametrize("code", [None, 1000, 1001, 1006, 1008, 1012, 4000, 4999, 3000])
def test_heartbeat_expired_is_always_heartbeat_timeout_1006_with_reconnect(
    code: int | None,
) -> None:
    assert classify(code, How.HEARTBEAT_EXPIRED) == Disconnect(
        DisconnectKind.HEARTBEAT_TIMEOUT, 1006, True
    )


@CLOSED_BY_EITHER_SIDE
@pytest.mark.parametrize("code", [1002, 1003, 1007, 1008, 1009, 1010])
def test_protocol_and_policy_codes_are_policy_without_reconnect(how: How, code: int) -> None:
    assert classify(code, how) == Disconnect(POLICY, code, False)


@CLOSED_BY_EITHER_SIDE
def test_1013_try_again_later_is_policy_but_invites_reconnect(how: How) -> None:
    assert classify(1013, how) == Disconnect(POLICY, 1013, True)


@CLOSED_BY_EITHER_SIDE
@pytest.mark.parametrize("code", [1006, 1011, 1014])
def test_server_errors_and_bad_gateway_are_abnormal_with_reconnect(how: How, code: int) -> None:
    assert classify(code, how) == Disconnect(ABNORMAL, code, True)


@CLOSED_BY_EITHER_SIDE
def test_tls_handshake_failure_is_abnormal_without_reconnect(how: How) -> None:
    assert classify(1015, how) == Disconnect(ABNORMAL, 1015, False)


@CLOSED_BY_EITHER_SIDE
@pytest.mark.parametrize("code", [4001, 4250, 4499])
def test_application_codes_4001_to_4499_invite_reconnect(how: How, code: int) -> None:
    assert classify(code, how) == Disconnect(APPLICATION, code, True)


@CLOSED_BY_EITHER_SIDE
def test_session_replaced_4000_does_not_invite_a_reconnect(how: How) -> None:
    # The newer connection owns the session; reconnecting would steal it back.
    assert classify(4000, how) == Disconnect(APPLICATION, 4000, False)


@CLOSED_BY_EITHER_SIDE
@pytest.mark.parametrize("code", [4500, 4501, 4750, 4999])
def test_application_codes_4500_to_4999_are_terminal(how: How, code: int) -> None:
    assert classify(code, how) == Disconnect(APPLICATION, code, False)


@CLOSED_BY_EITHER_SIDE
@pytest.mark.parametrize("code", [999, 1004, 1016, 2000, 2999, 3000, 3999, 5000, 65535])
def test_unknown_codes_are_policy_without_reconnect(how: How, code: int) -> None:
    assert classify(code, how) == Disconnect(POLICY, code, False)


def test_application_ranges_are_adjacent_and_cover_4000_to_4999() -> None:
    assert (APP_RECONNECT_RANGE.start, APP_RECONNECT_RANGE.stop) == (4000, 4500)
    assert (APP_TERMINAL_RANGE.start, APP_TERMINAL_RANGE.stop) == (4500, 5000)


def test_session_replaced_is_in_the_application_range_but_terminal_for_the_client() -> None:
    assert CloseCode.SESSION_REPLACED in APP_RECONNECT_RANGE
    assert classify(CloseCode.SESSION_REPLACED, How.SERVER_CLOSED).reconnect is False


def test_close_code_values_match_rfc_6455() -> None:
    assert {c.name: int(c) for c in CloseCode if c < 4000} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "PROTOCOL_ERROR": 1002,
        "UNSUPPORTED_DATA": 1003,
        "NO_STATUS": 1005,
        "ABNORMAL": 1006,
        "INVALID_PAYLOAD": 1007,
        "POLICY_VIOLATION": 1008,
        "MESSAGE_TOO_BIG": 1009,
        "MANDATORY_EXTENSION": 1010,
        "INTERNAL_ERROR": 1011,
        "SERVICE_RESTART": 1012,
        "TRY_AGAIN_LATER": 1013,
        "BAD_GATEWAY": 1014,
        "TLS_HANDSHAKE": 1015,
    }


def test_disconnect_kinds_log_as_their_lowercase_names() -> None:
    assert [str(k) for k in DisconnectKind] == [
        "graceful",
        "abnormal",
        "heartbeat_timeout",
        "policy",
        "shutdown",
        "application",
    ]
