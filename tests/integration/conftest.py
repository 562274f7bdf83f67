"""pytest fixtures for the pgshift integration tests.

Target switch (environment):
  PGSHIFT_TARGET=pgshift   (default) clients connect through pgshift, started
                           from PGSHIFT_BIN (default ./pgshift) in front of the
                           test cluster(s).
  PGSHIFT_TARGET=postgres  clients connect to PostgreSQL directly: checks the
                           harness and the scenarios themselves. Tests marked
                           proxy_only (behaviour only pgshift has) are skipped
                           in this mode, with the reason shown.

Fixtures:
  pg               the session's PostgreSQL 15 cluster (harness.Cluster)
  clusters         more clusters: clusters.new("name") (fresh, yours alone) or
                   clusters.get("name") (shared by name for the session)
  tls_cert         (cert_path, key_path) of a self-signed certificate
  endpoint         where clients connect (harness.Endpoint), shared pgshift
  pgshift_factory  start a dedicated pgshift: pgshift_factory(stores={...},
                   settings={...}) -> Endpoint; stopped after the test
  dsn              a function: dsn(user="app", **kw) -> conninfo via endpoint
"""

import atexit
import os
import shutil
import signal
import tempfile

import pytest

import harness

TARGET = os.environ.get("PGSHIFT_TARGET", "pgshift")
if TARGET not in ("pgshift", "postgres"):
    raise SystemExit("PGSHIFT_TARGET must be pgshift or postgres, not %r" % TARGET)
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TEST_TIMEOUT = int(os.environ.get("PGSHIFT_TEST_TIMEOUT", "90"))

# Everything started here, so that it is stopped whatever happens.
_clusters = []
_pgshifts = []


def _stop_all():
    for p in list(_pgshifts):
        try:
            p.stop(timeout=5)
        except Exception:
            pass
    for c in list(_clusters):
        try:
            c.stop("immediate")
        except Exception:
            pass


atexit.register(_stop_all)


def pgshift_bin():
    b = os.environ.get("PGSHIFT_BIN", os.path.join(REPO, "pgshift"))
    return os.path.abspath(os.path.join(REPO, b)) if not os.path.isabs(b) else b


def pytest_configure(config):
    config.addinivalue_line("markers", "proxy_only: behaviour that only pgshift has "
                            "(skipped, with the reason, when PGSHIFT_TARGET=postgres)")
    config.addinivalue_line("markers", "slow: takes tens of seconds; left out of the sanitizer "
                            "pass in CI (PGSHIFT_SKIP_SLOW=1), run everywhere else")
    config.addinivalue_line("markers", "feature(name): the proxy feature a test exercises "
                            "(informational; such tests fail until the feature works)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item (item.rep_call), so a fixture's
    teardown can tell a test that failed from one that passed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_report_header(config):
    if TARGET == "postgres":
        return "pgshift integration: target=postgres (direct, no pgshift)"
    return "pgshift integration: target=pgshift, PGSHIFT_BIN=%s" % pgshift_bin()


def pytest_collection_modifyitems(config, items):
    if TARGET != "postgres":
        return
    skip = pytest.mark.skip(reason="proxy_only: needs pgshift (PGSHIFT_TARGET=postgres)")
    for item in items:
        if "proxy_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def basedir():
    root = os.environ.get("PGSHIFT_IT_TMP") or None
    d = tempfile.mkdtemp(prefix="pgshift-it-", dir=root)
    os.chmod(d, 0o755)
    yield d
    _stop_all()
    if os.environ.get("PGSHIFT_KEEP_TMP") != "1":
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_cert(basedir):
    d = os.path.join(basedir, "tls")
    os.makedirs(d)
    return harness.make_tls_cert(d)


class ClusterPool:
    def __init__(self, basedir, tls_cert):
        self.basedir = basedir
        self.tls_cert = tls_cert
        self.n = 0
        self.by_name = {}

    def get(self, name):
        """The cluster called `name`, started on first use and then shared
        for the session (for tests that need 2-3 stores)."""
        if name not in self.by_name:
            self.by_name[name] = self.new(name)
        return self.by_name[name]

    def new(self, name=None):
        """Start a fresh cluster with roles and schema; stopped at session end."""
        self.n += 1
        c = harness.Cluster(self.basedir, name or "store%d" % self.n, self.tls_cert[0],
                            self.tls_cert[1])
        _clusters.append(c)
        return c.init()


@pytest.fixture(scope="session")
def clusters(basedir, tls_cert):
    pool = ClusterPool(basedir, tls_cert)
    yield pool
    for c in _clusters:
        c.stop("immediate")


@pytest.fixture(scope="session")
def pg(clusters):
    return clusters.new("main")


def _start_pgshift(basedir, name, stores, **kw):
    binary = pgshift_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail("pgshift binary not found at %s: build it with `make`, or run against "
                    "PostgreSQL directly with PGSHIFT_TARGET=postgres" % binary)
    p = harness.Pgshift(binary, os.path.join(basedir, name), stores, **kw)
    _pgshifts.append(p)
    p.start()
    return p


class _Shared:
    pgshift = None
    n = 0


@pytest.fixture(scope="session")
def _shared_endpoint(basedir, pg, tls_cert):
    """The session's shared target: one pgshift in front of `pg` (client TLS
    allowed), or `pg` itself in direct mode."""
    if TARGET == "postgres":
        yield pg.endpoint()
        return
    _Shared.n += 1
    _Shared.pgshift = _start_pgshift(basedir, "pgshift-shared-%d" % _Shared.n, {"main": pg},
                                     tls=tls_cert)
    yield _Shared
    p = _Shared.pgshift
    if p.alive():
        p.stop()
        problems = p.problems(stopped=True)
        if problems:
            pytest.fail("shared pgshift at the end of the session: %s\nstderr:\n%s"
                        % ("; ".join(problems), p.stderr()[-6000:]))


@pytest.fixture
def endpoint(_shared_endpoint, basedir, pg, tls_cert):
    """Where clients connect for this test. After the test, the shared
    pgshift must still be alive with a clean stderr (else the test errors and
    a new pgshift is started for the next one)."""
    if TARGET == "postgres":
        yield _shared_endpoint
        return
    p = _Shared.pgshift
    before = len(p.stderr())
    yield p.endpoint()
    problems = p.problems()
    if problems:
        err = p.stderr()
        p.stop()
        _Shared.n += 1
        _Shared.pgshift = _start_pgshift(basedir, "pgshift-shared-%d" % _Shared.n,
                                         {"main": pg}, tls=tls_cert)
        pytest.fail("shared pgshift unhealthy after this test: %s\nstderr (from this test "
                    "on):\n%s" % ("; ".join(problems), err[before:][-6000:]))


@pytest.fixture
def dsn(endpoint):
    return endpoint.conninfo


@pytest.fixture
def pgshift_factory(basedir, pg, tls_cert):
    """start(stores=None, settings=None, auth_users=None, tls=False) ->
    Endpoint of a dedicated pgshift (direct mode: the first store itself).
    Each is stopped with SIGTERM after the test; the test fails if one died
    on its own or reported BUG / a sanitizer error."""
    started = []

    def start(stores=None, settings=None, auth_users=None, tls=False, sections=None):
        stores = stores or {"main": pg}
        if TARGET == "postgres":
            return next(iter(stores.values())).endpoint()
        _Shared.n += 1
        p = _start_pgshift(basedir, "pgshift-%d" % _Shared.n, stores, settings=settings,
                           auth_users=auth_users, tls=tls_cert if tls else None,
                           sections=sections)
        started.append(p)
        return p.endpoint()

    yield start
    failures = []
    for p in started:
        problems = p.problems()
        if not problems:
            p.stop()
            problems = p.problems(stopped=True)
        else:
            p.stop()
        if problems:
            failures.append("%s: %s\nstderr:\n%s" % (p.config_path, "; ".join(problems),
                                                      p.stderr()[-6000:]))
    if failures:
        pytest.fail("\n".join(failures))


@pytest.fixture(autouse=True)
def _test_timeout(request):
    """Fail a test that runs longer than PGSHIFT_TEST_TIMEOUT seconds instead
    of hanging the suite."""
    def on_alarm(signum, frame):
        raise TimeoutError("test exceeded %ds (PGSHIFT_TEST_TIMEOUT)" % TEST_TIMEOUT)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)
