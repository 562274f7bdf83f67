"""psql through pgshift: simple queries, errors, \\copy in and out, and
pgbench (simple, extended, prepared) with 8 clients."""

import os
import re
import subprocess

import pytest

from harness import PG_BIN

PSQL = os.path.join(PG_BIN, "psql")
PGBENCH = os.path.join(PG_BIN, "pgbench")


def psql(endpoint, *args, user="app", input=None, check=True, timeout=60):
    p = subprocess.run([PSQL, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"] + list(args),
                       env=endpoint.env(user=user), input=input, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("psql failed (%d): %s" % (p.returncode, p.stderr))
    return p


def test_simple_queries(endpoint):
    out = psql(endpoint, "-c", "SELECT 1 + 1", "-c", "SELECT current_database()",
               "-c", "SELECT string_agg(g::text, ',') FROM generate_series(1, 5) g").stdout
    assert out.split() == ["2", endpoint.dbname, "1,2,3,4,5"]


def test_multi_statement_and_transaction(endpoint):
    sql = ("CREATE TEMP TABLE t (a int); BEGIN; INSERT INTO t VALUES (1), (2); "
           "INSERT INTO t SELECT a + 10 FROM t; COMMIT; SELECT sum(a) FROM t;")
    assert psql(endpoint, "-c", sql).stdout.strip() == "26"


def test_error_then_session_continues(endpoint):
    script = ("\\set ON_ERROR_STOP 0\n"
              "SELECT 1/0;\n"
              "SELECT 'still here';\n")
    p = psql(endpoint, input=script, check=False)
    assert "division by zero" in p.stderr
    assert p.stdout.strip() == "still here"


def test_many_rows(endpoint):
    out = psql(endpoint, "-c", "SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
    lines = out.stdout.splitlines()
    assert len(lines) == 20000
    assert lines[-1] == "20000|" + "x" * 100


def test_copy_in_and_out(endpoint, tmp_path):
    table = "copy_psql_t"
    psql(endpoint, "-c", "DROP TABLE IF EXISTS %s; CREATE TABLE %s (id int PRIMARY KEY, "
                         "name text, data jsonb)" % (table, table))
    src = tmp_path / "in.csv"
    rows = ['%d,name %d,"{""k"": %d}"' % (i, i, i) for i in range(1, 5001)]
    src.write_text("\n".join(rows) + "\n")
    psql(endpoint, "-c", "\\copy %s FROM '%s' WITH (FORMAT csv)" % (table, src))
    assert psql(endpoint, "-c", "SELECT count(*), sum(id), sum((data->>'k')::int) FROM %s"
                % table).stdout.strip() == "5000|12502500|12502500"
    dst = tmp_path / "out.csv"
    psql(endpoint, "-c", "\\copy (SELECT * FROM %s ORDER BY id) TO '%s' WITH (FORMAT csv)"
         % (table, dst))
    assert dst.read_text().splitlines() == rows
    # COPY ... TO STDOUT through psql's own stdout.
    out = psql(endpoint, "-c", "COPY (SELECT id FROM %s WHERE id <= 3 ORDER BY id) TO STDOUT"
               % table).stdout
    assert out.split() == ["1", "2", "3"]
    # A failing COPY FROM (duplicate key) reports the error and leaves the table as it was.
    p = psql(endpoint, "-c", "\\copy %s FROM '%s' WITH (FORMAT csv)" % (table, src),
             check=False)
    assert p.returncode != 0 and "duplicate key" in p.stderr
    assert psql(endpoint, "-c", "SELECT count(*) FROM %s" % table).stdout.strip() == "5000"
    psql(endpoint, "-c", "DROP TABLE %s" % table)


def _pgbench(endpoint, *args, timeout=120):
    p = subprocess.run([PGBENCH] + list(args), env=endpoint.env(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=timeout)
    return p




@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_8_clients(endpoint, mode):
    init = _pgbench(endpoint, "-i", "-q", "-s", "1", "-I", "dtgvp")
    assert init.returncode == 0, init.stderr
    p = _pgbench(endpoint, "-n", "-c", "8", "-j", "2", "-T", "3", "-M", mode)
    assert p.returncode == 0, p.stdout + p.stderr
    processed = re.search(r"number of transactions actually processed: (\d+)", p.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", p.stdout)
    assert processed and int(processed.group(1)) > 0, p.stdout
    assert failed and int(failed.group(1)) == 0, p.stdout
    assert "number of clients: 8" in p.stdout
    assert "query mode: %s" % mode in p.stdout
