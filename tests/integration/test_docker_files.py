"""The deployment files stay consistent with the code: docker-compose.yml
parses and references files that exist; docker/pgshift.ini is a valid pgshift
configuration (checked by the binary itself)."""

import os
import subprocess

import pytest
import yaml

from conftest import REPO, pgshift_bin


def test_compose_file():
    with open(os.path.join(REPO, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    assert set(services) == {"source", "target", "pgshift"}
    for name in ("source", "target"):
        assert services[name]["image"] == "postgres:15"
        for vol in services[name]["volumes"]:
            src = vol.split(":")[0]
            assert os.path.exists(os.path.join(REPO, src)), vol
    pg = services["pgshift"]
    assert pg["build"]["dockerfile"] == "Dockerfile"
    assert set(pg["depends_on"]) == {"source", "target"}
    for vol in pg["volumes"]:
        assert os.path.exists(os.path.join(REPO, vol.split(":")[0])), vol
    with open(os.path.join(REPO, "Dockerfile")) as f:
        dockerfile = f.read()
    assert dockerfile.startswith("#") and "FROM debian:12" in dockerfile
    for pkg in ("libuv1-dev", "libpq-dev", "libssl-dev", "libpg-query-dev"):
        assert pkg in dockerfile


@pytest.mark.proxy_only
def test_docker_config_is_valid():
    p = subprocess.run([pgshift_bin(), "--check", "-c", os.path.join(REPO, "docker/pgshift.ini"),
                        "-o", "pgshift.auth_file=" + os.path.join(REPO, "docker/userlist.txt")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.proxy_only
def test_bad_config_names_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.ini"
    bad.write_text("[pgshift]\nlisten_port = 6432\nlisten_port_typo = 1\n\n[stores]\n"
                   "main = host=127.0.0.1 dbname=x user=app\n")
    p = subprocess.run([pgshift_bin(), "-c", str(bad)], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=30)
    assert p.returncode != 0
    assert "%s:3" % bad in p.stderr and "listen_port_typo" in p.stderr, p.stderr
