"""pack_with_hiredis: an asyncio client whose commands hiredis packs says to Redis exactly what redis-py's would.

Against a real redis-server: plain commands, a pipeline, a Lua script and a unicode/binary payload.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import DataError

from shared.redis_packing import pack_with_hiredis


def test_commands_pipelines_and_scripts_work_the_same(redis_server_url: str) -> None:
    async def scenario() -> None:
        packed, plain = pack_with_hiredis(Redis.from_url(redis_server_url)), Redis.from_url(redis_server_url)
        try:
            assert packed.connection_pool.connection_class is not Connection
            assert issubclass(packed.connection_pool.connection_class, Connection)
            value = "é ünïcode".encode() + bytes(range(256))
            await packed.hset("packing:h", mapping={"a": value, "b": 7, "c": 1.5})
            assert await plain.hgetall("packing:h") == {b"a": value, b"b": b"7", b"c": b"1.5"}
            async with packed.pipeline(transaction=True) as pipe:
                pipe.lpush("packing:l", "x", "y")
                pipe.llen("packing:l")
                assert await pipe.execute() == [2, 2]
            script = packed.register_script("return {KEYS[1], ARGV[1], #ARGV}")
            assert await script(keys=["packing:k"], args=["v", 2]) == [b"packing:k", b"v", 2]
            assert await packed.execute_command("CONFIG GET", "maxmemory") == await plain.config_get("maxmemory")
        finally:
            await plain.delete("packing:h", "packing:l")
            await packed.aclose()
            await plain.aclose()

    asyncio.run(scenario())


def test_a_client_of_another_connection_class_is_left_alone() -> None:
    client = Redis.from_url("unix:///tmp/no-such.sock")
    before = client.connection_pool.connection_class
    assert pack_with_hiredis(client).connection_pool.connection_class is not before  # redis-py's own: packed
    assert issubclass(client.connection_pool.connection_class, before)

    class Other(Connection):
        pass

    other = Redis(connection_pool=ConnectionPool(connection_class=Other))
    assert pack_with_hiredis(other).connection_pool.connection_class is Other


def test_what_hiredis_refuses_is_packed_by_redis_py() -> None:
    class Count(int):
        pass

    client = pack_with_hiredis(Redis.from_url("redis://127.0.0.1:1/0"))
    connection = client.connection_pool.make_connection()
    plain = Connection()
    for args in (("SET", "k", Count(3)), ("SET", "k", 1.5, "x"), ("CONFIG GET", "maxmemory")):
        assert b"".join(connection.pack_command(*args)) == b"".join(plain.pack_command(*args))
    with pytest.raises(DataError):
        connection.pack_command("SET", "k", None)
