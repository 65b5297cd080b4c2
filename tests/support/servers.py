"""Real servers for the test suite, started on free loopback ports and stopped after.

No mocks of the broker or the database: these are the real ``redis-server`` and
PostgreSQL binaries. A missing binary is a failure with the command to install it,
never a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_until

#: Databases of the test redis-server (one per test app).
REDIS_DATABASES = 256


class ServerMissing(RuntimeError):
    pass


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[Any], what: str) -> None:
    """Wait until ``proc`` (``what``) listens on ``port``; fail at once if it exits."""

    def listening() -> bool:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else b""
            text = out.decode(errors="replace") if isinstance(out, bytes) else out
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening:\n{text}")
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            sock.settimeout(0.2)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, f"{what} to listen on 127.0.0.1:{port}", timeout=timeout, interval=0.05)


class RedisServer:
    """A redis-server on a free loopback port that can be stopped and started again
    on the same port (``persistent``: its data survive, in an fsync'd append-only
    file, as a production Redis keeps its queues)."""

    def __init__(self, persistent: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerMissing(
                "redis-server is not installed; `make test` installs it "
                "(apt-get install redis-server)"
            )
        self.binary = binary
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="reliable-redis-")
        self.persistent = persistent
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *persistence,
                "--databases",
                str(REDIS_DATABASES),
                "--dir",
                self.workdir,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, 10, self.proc, "redis-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throw-away redis-server; yields its base URL ``redis://127.0.0.1:PORT``."""
    server = RedisServer()
    try:
        server.start()
        yield server.url
    finally:
        server.remove()


RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class RabbitMQServer:
    """A throw-away RabbitMQ node (Debian's ``rabbitmq-server``) on free loopback
    ports, with its own Erlang port mapper, data and logs in a temporary folder."""

    def __init__(self) -> None:
        if not os.path.exists(RABBITMQ_SERVER):
            raise ServerMissing(
                "rabbitmq-server is not installed; `make test` installs it "
                "(apt-get install rabbitmq-server)"
            )
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="reliable-rabbitmq-"))
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.proc: subprocess.Popen[bytes] | None = None
        (self.workdir / "enabled_plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(self.workdir),  # the Erlang cookie
            "RABBITMQ_NODENAME": f"reliable{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(self.workdir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.workdir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.workdir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.workdir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.workdir / "pid"),
        }

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [RABBITMQ_SERVER],
            env=self.env,
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self.port, 90, self.proc, "rabbitmq-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None
        # The node started a port mapper of its own, detached: stop it too.
        subprocess.run(
            ["epmd", "-port", str(self.epmd_port), "-kill"],
            env=self.env,
            check=False,
            capture_output=True,
        )

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def rabbitmq_server() -> Iterator[str]:
    """A throw-away RabbitMQ node; yields its AMQP URL."""
    server = RabbitMQServer()
    try:
        server.start()
        yield server.url
    finally:
        server.remove()


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise ServerMissing(
        f"PostgreSQL's {name} is not installed; `make test` installs it "
        "(apt-get install postgresql)"
    )


class PostgresServer:
    """A throw-away PostgreSQL cluster on a free loopback port that can be stopped and
    started again. Tests run it without waiting for the disk (``fsync=off``);
    ``durable=True`` keeps PostgreSQL's production defaults (fsync and synchronous
    commit on), for benchmarks and the chaos suite.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the
    ``postgres`` user and its data folder is a temporary directory that user owns.
    """

    def __init__(self, durable: bool = False) -> None:
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="reliable-pg-"))
        self.data = self.workdir / "data"
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.workdir, user="postgres", group="postgres")
            os.chmod(self.workdir, 0o700)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        self.durable = durable
        self.url = f"postgresql+psycopg://reliable@127.0.0.1:{self.port}/reliable"
        subprocess.run(
            [
                *self.prefix,
                self.initdb,
                "-D",
                str(self.data),
                "-U",
                "reliable",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            env=self.env,
        )
        self._created = False

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.workdir} -c max_connections=200"
        )
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        subprocess.run(
            [
                *self.prefix,
                self.pg_ctl,
                "-D",
                str(self.data),
                "-o",
                options,
                "-l",
                str(self.workdir / "log"),
                "-w",
                "-t",
                "30",
                "start",
            ],
            check=True,
            capture_output=True,
            env=self.env,
        )
        if not self._created:
            subprocess.run(
                ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "reliable", "-d",
                 "postgres", "-c", "CREATE DATABASE reliable"],
                check=True,
                capture_output=True,
                env=self.env,
            )  # fmt: skip
            self._created = True

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"],
            check=False,
            capture_output=True,
            env=self.env,
        )

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def postgres_server(durable: bool = False) -> Iterator[str]:
    """A throw-away PostgreSQL cluster; yields a SQLAlchemy URL (psycopg 3)."""
    server = PostgresServer(durable)
    try:
        server.start()
        yield server.url
    finally:
        server.remove()
