"""asyncpg through pgshift: prepared statements, executemany, COPY both ways,
transactions, concurrent awaits on a pool, errors."""

import asyncio
import io
import uuid

import asyncpg
import pytest

from harness import PASSWORDS


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def connect(endpoint, user="app", **kw):
    return await asyncpg.connect(host=endpoint.host, port=endpoint.port, user=user,
                                 password=PASSWORDS[user], database=endpoint.dbname,
                                 ssl=False, timeout=10, **kw)


def test_prepared_statements(endpoint):
    async def main():
        conn = await connect(endpoint)
        try:
            stmt = await conn.prepare("SELECT $1::int * 2 AS doubled, $2::text || '!' AS shout")
            assert [a.name for a in stmt.get_attributes()] == ["doubled", "shout"]
            assert [p.name for p in stmt.get_parameters()] == ["int4", "text"]
            for i in range(50):
                row = await stmt.fetchrow(i, "hey%d" % i)
                assert (row["doubled"], row["shout"]) == (i * 2, "hey%d!" % i)
            # Cursor over a prepared statement inside a transaction.
            async with conn.transaction():
                big = await conn.prepare("SELECT g FROM generate_series(1, $1::int) g")
                seen = [r[0] async for r in big.cursor(5000, prefetch=250)]
                assert seen == list(range(1, 5001))
            # Types round-trip in binary.
            u = uuid.uuid4()
            assert await conn.fetchval("SELECT $1::uuid", u) == u
            assert await conn.fetchval("SELECT $1::jsonb", '{"a": 1}') == '{"a": 1}'
            assert await conn.fetchval("SELECT $1::int[]", [1, None, 3]) == [1, None, 3]
            # The statement cache reuses named server-side statements.
            for _ in range(3):
                assert await conn.fetchval("SELECT 'cached' || $1::text", "x") == "cachedx"
        finally:
            await conn.close()

    run(main())


def test_executemany_and_transactions(endpoint):
    async def main():
        conn = await connect(endpoint)
        try:
            await conn.execute("CREATE TEMP TABLE am (id int PRIMARY KEY, v text)")
            await conn.executemany("INSERT INTO am VALUES ($1, $2)",
                                   [(i, "v%d" % i) for i in range(2000)])
            assert await conn.fetchval("SELECT count(*) FROM am") == 2000
            # A failing executemany is atomic.
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.executemany("INSERT INTO am VALUES ($1, $2)",
                                       [(5000, "a"), (5001, "b"), (1, "dup")])
            assert await conn.fetchval("SELECT count(*) FROM am WHERE id >= 5000") == 0
            # Transactions: commit, rollback, nested savepoint.
            async with conn.transaction():
                await conn.execute("INSERT INTO am VALUES (9000, 'kept')")
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO am VALUES (9001, 'lost')")
                    raise RuntimeError("roll back")
            except RuntimeError:
                pass
            async with conn.transaction():
                await conn.execute("INSERT INTO am VALUES (9002, 'outer')")
                with pytest.raises(asyncpg.UniqueViolationError):
                    async with conn.transaction():
                        await conn.execute("INSERT INTO am VALUES (9000, 'dup')")
            ids = await conn.fetch("SELECT id FROM am WHERE id >= 9000 ORDER BY id")
            assert [r["id"] for r in ids] == [9000, 9002]
            assert not conn.is_in_transaction()
        finally:
            await conn.close()

    run(main())


def test_copy_records_and_copy_from_query(endpoint):
    async def main():
        conn = await connect(endpoint)
        try:
            await conn.execute("CREATE TEMP TABLE ac (id int, name text, amount numeric)")
            records = [(i, "n%d" % i, i * 1.5) for i in range(10000)]
            status = await conn.copy_records_to_table("ac", records=records,
                                                      columns=["id", "name", "amount"])
            assert status == "COPY 10000"
            assert await conn.fetchval("SELECT sum(id) FROM ac") == sum(range(10000))
            buf = io.BytesIO()
            status = await conn.copy_from_query("SELECT id, name FROM ac WHERE id < $1 "
                                                "ORDER BY id", 4, output=buf, format="csv")
            assert status == "COPY 4"
            assert buf.getvalue().decode().splitlines() == ["0,n0", "1,n1", "2,n2", "3,n3"]
            # copy_to_table from a file-like source.
            src = io.BytesIO(b"".join(b"%d\tfrom-file\t1\n" % i for i in range(20000, 20100)))
            assert await conn.copy_to_table("ac", source=src) == "COPY 100"
            assert await conn.fetchval("SELECT count(*) FROM ac WHERE name = 'from-file'") == 100
        finally:
            await conn.close()

    run(main())


def test_pipelining_by_concurrent_awaits(endpoint):
    """A pool of 8 connections with 400 concurrent queries in flight; each
    answer must match its own question."""
    async def main():
        pool = await asyncpg.create_pool(host=endpoint.host, port=endpoint.port, user="app",
                                         password=PASSWORDS["app"], database=endpoint.dbname,
                                         ssl=False, min_size=8, max_size=8, timeout=10)
        try:
            async def one(i):
                return await pool.fetchval("SELECT $1::int + 0 * length(pg_sleep(0.001)::text)",
                                           i)
            results = await asyncio.gather(*(one(i) for i in range(400)))
            assert results == list(range(400))
        finally:
            await pool.close()

        # One connection: asyncpg queues the awaits; results stay in order.
        conn = await connect(endpoint)
        try:
            res = await asyncio.gather(*(conn.fetchval("SELECT $1::text", str(i))
                                         for i in range(100)), return_exceptions=True)
            # asyncpg refuses overlapping operations on one connection, or runs them
            # in sequence; either way no answer may belong to another query.
            for i, r in enumerate(res):
                assert r == str(i) or isinstance(r, asyncpg.InterfaceError), (i, r)
        finally:
            await conn.close()

    run(main())


def test_errors_keep_connection_usable(endpoint):
    async def main():
        conn = await connect(endpoint)
        try:
            with pytest.raises(asyncpg.UndefinedTableError):
                await conn.fetch("SELECT * FROM no_such_table_here")
            with pytest.raises(asyncpg.DivisionByZeroError):
                await conn.fetchval("SELECT 1 / $1::int", 0)
            with pytest.raises(asyncpg.PostgresSyntaxError):
                await conn.execute("SELEC 1")
            with pytest.raises(asyncpg.QueryCanceledError):
                await conn.execute("SET statement_timeout = 100; SELECT pg_sleep(5)")
            await conn.execute("RESET statement_timeout")
            assert await conn.fetchval("SELECT 'fine'") == "fine"
        finally:
            await conn.close()

    run(main())


def test_cancel_via_timeout(endpoint):
    """asyncpg cancels a query that exceeds its timeout (CancelRequest)."""
    async def main():
        conn = await connect(endpoint)
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT pg_sleep(30)", timeout=0.5)
            assert loop.time() - t0 < 5
            assert await conn.fetchval("SELECT 'after cancel'") == "after cancel"
        finally:
            await conn.close()

    run(main())


def test_scram_user_and_wrong_password(endpoint):
    async def main():
        conn = await connect(endpoint, user="scramuser")
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError) as ei:
            await asyncpg.connect(host=endpoint.host, port=endpoint.port, user="app",
                                  password="wrong", database=endpoint.dbname, ssl=False,
                                  timeout=10)
        assert ei.value.sqlstate == "28P01"
        with pytest.raises(asyncpg.InvalidCatalogNameError) as ei:
            await asyncpg.connect(host=endpoint.host, port=endpoint.port, user="app",
                                  password=PASSWORDS["app"], database="no_such_db",
                                  ssl=False, timeout=10)
        assert ei.value.sqlstate == "3D000"

    run(main())
