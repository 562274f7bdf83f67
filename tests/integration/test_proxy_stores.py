"""Several stores behind one pgshift: statements without a tenant go to the
default store; each store is reached with its own credentials."""

import psycopg
import pytest

pytestmark = pytest.mark.proxy_only


def server_port(ep):
    with psycopg.connect(ep.conninfo(), autocommit=True) as conn:
        return conn.execute("SELECT inet_server_port()").fetchone()[0]


def test_default_store_is_used(clusters, pgshift_factory):
    a, b = clusters.get("store_a"), clusters.get("store_b")
    assert a.port != b.port
    ep = pgshift_factory(stores={"a": a, "b": b}, settings={"default_store": "b"})
    assert server_port(ep) == b.port
    ep2 = pgshift_factory(stores={"a": a, "b": b})  # default: the first store
    assert server_port(ep2) == a.port


def test_three_stores_and_data_stays_on_its_store(clusters, pgshift_factory):
    a, b, c = clusters.get("store_a"), clusters.get("store_b"), clusters.get("store_c")
    c.psql("CREATE TABLE IF NOT EXISTS only_on_c (x int); TRUNCATE only_on_c; "
           "INSERT INTO only_on_c VALUES (7); ALTER TABLE only_on_c OWNER TO app",
           dbname=c.dbname)
    ep = pgshift_factory(stores={"a": a, "b": b, "c": c}, settings={"default_store": "c"})
    with psycopg.connect(ep.conninfo(), autocommit=True) as conn:
        assert conn.execute("SELECT x FROM only_on_c").fetchone()[0] == 7
        assert conn.execute("SELECT current_user").fetchone()[0] == "app"
    with psycopg.connect(a.conninfo(), autocommit=True) as direct:
        assert direct.execute("SELECT to_regclass('only_on_c') IS NULL").fetchone()[0]
