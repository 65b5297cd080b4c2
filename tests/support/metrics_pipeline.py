"""The real metrics pipeline of the Graphite dashboards: the reference StatsD daemon
(the ``statsd`` package on npm, run by Node.js) flushing into carbon-cache (Debian's
``graphite-carbon``), read back through graphite-web's render API (Debian's
``graphite-web``), each on free loopback ports in a temporary directory.

``make statsd-daemon`` installs the npm package under ``.cache/``; ``make test``
installs the Debian packages. A missing piece is a failure naming the command that
installs it, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.servers import ServerMissing, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
STATSD_DAEMON = ROOT / ".cache" / "statsd-daemon" / "node_modules" / "statsd"
#: Seconds between the StatsD daemon's flushes, and carbon's resolution: graphite-web's
#: movingSum costs (points in range) x (points in window) per series, so finer is slower.
FLUSH_SECONDS = 5
#: Graphite-web runs on Debian's Python, where the package put it.
SYSTEM_PYTHON = "/usr/bin/python3"


def _require(path: str | Path, install: str) -> None:
    if not Path(path).exists():
        raise ServerMissing(f"{path} is missing: {install}")


@dataclass(frozen=True)
class Pipeline:
    statsd_port: int
    render_url: str
    #: graphite-web's log directory (its exception.log explains a 500).
    web_logs: Path

    def render(self, target: str, since: str = "-10min") -> list[dict[str, Any]]:
        """graphite-web's answer to one target: ``[{"target": ..., "datapoints":
        [[value, timestamp], ...]}, ...]``."""
        query = urllib.parse.urlencode({"target": target, "from": since, "format": "json"})
        try:
            with urllib.request.urlopen(f"{self.render_url}?{query}", timeout=30) as response:
                series: list[dict[str, Any]] = json.load(response)
        except urllib.error.HTTPError as exc:
            log = self.web_logs / "exception.log"
            tail = log.read_text()[-3000:] if log.exists() else "(no exception.log)"
            raise AssertionError(f"graphite-web answered {exc.code} to {target}:\n{tail}") from exc
        return series

    def find(self, query: str) -> list[str]:
        """graphite-web's metric finder (what Grafana's template variables run)."""
        url = self.render_url.replace("/render", "/metrics/find")
        with urllib.request.urlopen(
            f"{url}?{urllib.parse.urlencode({'query': query})}", timeout=30
        ) as response:
            return [node["text"] for node in json.load(response)]


def _carbon(home: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    _require("/usr/bin/carbon-cache", "apt-get install graphite-carbon (make test does)")
    conf = home / "carbon"
    (conf / "whisper").mkdir(parents=True)
    line_port, query_port, pickle_port = free_port(), free_port(), free_port()
    (conf / "carbon.conf").write_text(
        textwrap.dedent(
            f"""\
            [cache]
            STORAGE_DIR = {conf}/
            LOCAL_DATA_DIR = {conf}/whisper/
            CONF_DIR = {conf}/
            LOG_DIR = {conf}/log/
            PID_DIR = {conf}/
            DATABASE = whisper
            MAX_CACHE_SIZE = inf
            MAX_UPDATES_PER_SECOND = inf
            MAX_CREATES_PER_MINUTE = inf
            LINE_RECEIVER_INTERFACE = 127.0.0.1
            LINE_RECEIVER_PORT = {line_port}
            ENABLE_UDP_LISTENER = False
            PICKLE_RECEIVER_INTERFACE = 127.0.0.1
            PICKLE_RECEIVER_PORT = {pickle_port}
            CACHE_QUERY_INTERFACE = 127.0.0.1
            CACHE_QUERY_PORT = {query_port}
            LOG_UPDATES = False
            LOG_CREATES = False
            """
        )
    )
    # One point per flush, kept 3 hours: the longest query (an alert's hour, plus the
    # 30-minute window movingSum reads before it) fits. Counts are summed
    # when rolled up, as docs/grafana/README.md tells; everything else is carbon's
    # default (average, xFilesFactor 0.5), as in production.
    (conf / "storage-schemas.conf").write_text(
        f"[default]\npattern = .*\nretentions = {FLUSH_SECONDS}s:3h\n"
    )
    (conf / "storage-aggregation.conf").write_text(
        "[count]\npattern = \\.count$\naggregationMethod = sum\n"
    )
    proc = subprocess.Popen(
        ["/usr/bin/carbon-cache", f"--config={conf}/carbon.conf", "--debug", "start"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=conf,
    )
    wait_for_port(line_port, 30, proc, "carbon-cache")
    wait_for_port(query_port, 30, proc, "carbon-cache's query port")
    return proc, line_port, query_port


def _graphite_web(
    home: Path, whisper: Path, query_port: int
) -> tuple[subprocess.Popen[bytes], int]:
    _require(
        "/usr/lib/python3/dist-packages/graphite/settings.py",
        "apt-get install graphite-web (make test does)",
    )
    storage = home / "graphite-web"
    (storage / "log").mkdir(parents=True)
    settings = storage / "reliable_graphite_settings.py"
    settings.write_text(
        textwrap.dedent(
            f"""\
            SECRET_KEY = "celery-reliable-tests"
            STORAGE_DIR = {str(storage)!r}
            WHISPER_DIR = {str(whisper) + "/"!r}
            LOG_DIR = {str(storage / "log")!r}
            INDEX_FILE = {str(storage / "index")!r}
            CONF_DIR = {str(storage)!r}
            GRAPHITE_ROOT = "/usr/share/graphite-web"
            STATIC_ROOT = "/usr/share/graphite-web/static"
            DEFAULT_XFILES_FACTOR = 0
            # Read whisper files only. Asking carbon-cache for the points it has not
            # written yet took about a second per series here (carbon's reactor shares
            # its GIL with the writer thread), so an alert query over 26 series took
            # 30 s; carbon writes each flush within the flush interval anyway.
            CARBONLINK_HOSTS = []
            USE_WORKER_POOL = False
            FETCH_TIMEOUT = 60
            FIND_TIMEOUT = 60
            DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3",
                                       "NAME": {str(storage / "graphite.db")!r}}}}}
            """
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(storage),
        "GRAPHITE_SETTINGS_MODULE": "reliable_graphite_settings",
        "DJANGO_SETTINGS_MODULE": "graphite.settings",
    }
    env.pop("VIRTUAL_ENV", None)
    django = [SYSTEM_PYTHON, "-m", "django"]
    subprocess.run(
        [*django, "migrate", "--run-syncdb", "-v", "0"],
        env=env,
        check=True,
        capture_output=True,
        cwd=storage,
    )
    port = free_port()
    proc = subprocess.Popen(
        [*django, "runserver", "--noreload", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=storage,
    )
    wait_for_port(port, 60, proc, "graphite-web")
    return proc, port


def _statsd_daemon(home: Path, carbon_port: int) -> tuple[subprocess.Popen[bytes], int]:
    node = shutil.which("node")
    if node is None:
        raise ServerMissing("node is missing: apt-get install nodejs (make test does)")
    _require(STATSD_DAEMON / "stats.js", "run `make statsd-daemon` (make test does)")
    port, admin = free_port(), free_port()
    config = home / "statsd.js"
    config.write_text(
        json.dumps(
            {
                "address": "127.0.0.1",
                "port": port,
                "mgmt_address": "127.0.0.1",
                "mgmt_port": admin,
                "graphiteHost": "127.0.0.1",
                "graphitePort": carbon_port,
                "flushInterval": FLUSH_SECONDS * 1000,
                "backends": ["./backends/graphite"],
                # Its current layout: stats.counters.*, stats.timers.*, stats.gauges.*
                "graphite": {"legacyNamespace": False},
                "deleteIdleStats": False,
                # As docs/grafana/README.md tells: the p95 panels read upper_95.
                "percentThreshold": [90, 95],
            }
        )
    )
    proc = subprocess.Popen(
        [node, "stats.js", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=STATSD_DAEMON,
    )
    wait_for_port(admin, 30, proc, "the StatsD daemon")
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def graphite_pipeline() -> Iterator[Pipeline]:
    home = Path(tempfile.mkdtemp(prefix="reliable-graphite-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        carbon, line_port, query_port = _carbon(home)
        procs.append(carbon)
        web, web_port = _graphite_web(home, home / "carbon" / "whisper", query_port)
        procs.append(web)
        statsd, statsd_port = _statsd_daemon(home, line_port)
        procs.append(statsd)
        yield Pipeline(
            statsd_port, f"http://127.0.0.1:{web_port}/render", home / "graphite-web" / "log"
        )
    finally:
        for proc in reversed(procs):
            _stop(proc)
        shutil.rmtree(home, ignore_errors=True)
