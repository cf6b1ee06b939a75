"""A full restart: the players' tokens name sessions that died with the previous run."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from core.tokens import TokenSigner, load_or_create_secret
from lab.rawws import RawClient
from lab.server import open_server
from tests.support import open_client, resume_path


async def test_a_token_of_an_earlier_run_is_refused_at_once_without_routing(
    tmp_path: Path,
) -> None:
    secret = str(tmp_path / "secret")
    args = ("--secret-file", secret)
    async with open_server(*args, shards=2, echo_logs=False) as first:
        async with open_client(first.url()) as (_, welcome):
            assert welcome is not None
    # The refusal needs the token to be older than the new run by more than its 2 s
    # margin: the condition is the wall clock itself, so wait for that moment.
    issued = TokenSigner(load_or_create_secret(secret)).verify(welcome["token"], time.time())
    await trio.sleep(max(0.0, issued.issued_at + 2.5 - time.time()))

    async with open_server(*args, shards=2, echo_logs=False) as second:
        # Many tries, so the kernel hands some to each shard: none may be passed on.
        for _ in range(8):
            async with open_client(second.url(resume_path(welcome, 0))) as (_, again):
                assert again is not None
                assert again["resumed"] is False
                assert again["resume_error"] == "expired"
                assert again["session"] != welcome["session"]
        failed = second.log.events("resume_failed")
        assert len(failed) == 8
        assert {f["detail"] for f in failed} == {"issued before this server started"}
        assert not second.log.events("routed")
        assert not second.log.events("fetch_timeout")


async def test_a_token_of_this_run_still_resumes_on_any_shard(tmp_path: Path) -> None:
    args = ("--secret-file", str(tmp_path / "secret"))
    async with open_server(*args, shards=2, echo_logs=False) as server:
        for _ in range(4):  # the kernel picks the shard: resumes land on both
            client = await RawClient.connect(server.port)
            welcome = await client.receive_until("welcome")
            client.vanish()
            await server.log.wait_for("disconnect", session=welcome["session"])
            async with open_client(server.url(resume_path(welcome, 0))) as (_, again):
                assert again is not None
                assert again["resumed"] is True, again
                assert again["session"] == welcome["session"]
        assert not server.log.events("resume_failed")
