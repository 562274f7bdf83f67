"""node-postgres (npm `pg`) through pgshift, driven by the scripts in node/."""

import json
import os
import shutil
import subprocess


NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")


def node(endpoint, script, timeout=60):
    exe = shutil.which("node") or shutil.which("nodejs")
    assert exe, "node is not installed (scripts/install-deps.sh)"
    assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", "pg")), \
        "npm pg missing in tests/integration/node (scripts/install-deps.sh)"
    p = subprocess.run([exe, os.path.join(NODE_DIR, script)], cwd=NODE_DIR,
                       env=endpoint.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=timeout)
    assert p.returncode == 0, "%s failed:\n%s%s" % (script, p.stdout, p.stderr)
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_parameterized_queries(endpoint):
    out = node(endpoint, "params.js")
    assert out["row"] == {"sum": 42, "t": "héllo", "j": {"a": [1, 2]}, "isnull": True}
    assert out["fields"] == ["sum", "t", "j", "isnull"]
    assert out["count"] == 1000 and out["last"] == 1000
    assert out["array"] == [7, "x"]
    assert out["multi"] == [{"one": 1}, {"two": 2}]


def test_prepared_named_statements(endpoint):
    out = node(endpoint, "prepared.js")
    assert out["sel"] == ["v0", "v10", "v20", "v30", "v40"]
    assert out["prepared"] == ["ins", "sel"]
    assert out["count"] == 100
    assert out["many"] == list(range(200))


def test_transaction(endpoint):
    out = node(endpoint, "transaction.js")
    assert out == {"during": 0, "afterCommit": 2, "afterRollback": 2, "aborted": "23505",
                   "inFailed": "25P02"}


def test_errors(endpoint):
    out = node(endpoint, "errors.js")
    assert out == {"syntax": "42601", "undefinedTable": "42P01", "divByZero": "22012",
                   "badParam": "22P02", "raised": "P0001", "after": 42,
                   "wrongPassword": "28P01", "unknownDatabase": "3D000"}
