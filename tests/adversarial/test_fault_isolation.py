"""One connection's failure ends that connection only: an exception in the app's
callbacks (or in encoding what the app sends) closes that client with 1011 on the wire,
is logged once with its traceback and counted, and neither its shard nor any other
player notices."""

from __future__ import annotations

import pytest

from lab.rawws import RawClient
from lab.server import open_server
from tests.support import bystander

pytestmark = pytest.mark.timeout(60)

APP = ("--app", "tests.adversarial.faulty_app:FaultyApp")


@pytest.mark.parametrize("data", ["boom", "send-unencodable"])
async def test_an_app_exception_closes_only_that_client_with_1011(data: str) -> None:
    async with open_server(*APP, shards=1, echo_logs=False) as server:
        async with bystander(server.port):
            victim, welcome = await RawClient.open(server.port)
            assert welcome is not None
            await victim.echo("fine")
            await victim.send({"type": "echo", "data": data})
            assert await victim.closed_with() == 1011
            line = await server.log.wait_for("disconnect", session=welcome["session"])
            assert int(line["code"]) == 1011
            errors = server.log.events("app_error") + server.log.events("connection_error")
            assert errors and "Traceback" in errors[0]["traceback"]
        assert not server.log.events("shard_exit")


async def test_an_exception_in_on_connect_closes_that_client_with_1011() -> None:
    async with open_server(*APP, shards=1, echo_logs=False) as server:
        async with bystander(server.port):
            victim, _ = await RawClient.open(server.port, "/rooms/crash-on-connect")
            assert await victim.closed_with() == 1011
            await server.log.wait_for("app_error", callback="on_connect")
        assert not server.log.events("shard_exit")


async def test_exceptions_in_on_away_and_on_leave_are_logged_and_change_nothing_else() -> None:
    async with open_server(*APP, shards=1, echo_logs=False) as server:
        async with bystander(server.port):
            leaver, _ = await RawClient.open(server.port)
            await leaver.aclose()
            await server.log.wait_for("app_error", callback="on_leave")
            vanisher, _ = await RawClient.open(server.port)
            vanisher.stream.socket.close()
            await server.log.wait_for("app_error", callback="on_away")
        assert not server.log.events("shard_exit")
