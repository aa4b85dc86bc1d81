"""A real PostgreSQL server for the tests: found (PYKMS_TEST_PG_DSN) or started on loopback from Debian's binaries.

How a server is started (``PgServer.create``): ``initdb`` into a fresh temporary directory, then ``pg_ctl start``
listening on 127.0.0.1 at a free port, with its unix socket in that directory. PostgreSQL refuses to run as root,
so when the tests run as root the cluster is owned by, and run as, the ``postgres`` account that Debian's
postgresql package creates (``runuser -u postgres --``); otherwise it runs as the current user. Local (socket)
connections are trusted; TCP connections need the superuser's password (scram-sha-256), so the DSNs the tests
hand to pykms carry a password, as a production one does, and secrecy of it can be checked.

Binaries: ``PYKMS_PG_BINDIR``, else ``pg_config --bindir``, else the newest ``/usr/lib/postgresql/*/bin``.

Fixtures (import them into a test module: ``from tests.pg import pg_server, pg_dsn``):

- ``pg_server`` (session): one server for the whole run; ``stop()``, ``start()``, ``restart()`` for fault tests
  (a test that stops it must start it again; ``ensure_running()`` is called before every ``pg_dsn``).
- ``pg_dsn`` (function): a fresh database for one test and its DSN (dropped afterwards).
- ``private_pg`` (function): a server of the test's own, for tests that reconfigure or kill the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

__all__ = ["PgServer", "find_bindir", "pg_dsn", "pg_server", "private_pg", "require_postgres"]

SUPERUSER = "pykms_test"

_REAPER = """
import json, shutil, subprocess, sys
sys.stdin.read()
subprocess.run(json.loads(sys.argv[1]), capture_output=True, timeout=120)
shutil.rmtree(sys.argv[2], ignore_errors=True)
"""


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres, or None."""
    override = os.environ.get("PYKMS_PG_BINDIR")
    candidates: list[Path] = [Path(override)] if override else []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))
    versioned = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version_key(p.parent.name))
    candidates.extend(reversed(versioned))
    for cand in candidates:
        if (cand / "initdb").is_file() and (cand / "pg_ctl").is_file():
            return cand
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in name.split(".") if x.isdigit())


def require_postgres() -> Path:
    """Skip the calling test, with the reason, unless a server can be started."""
    if os.environ.get("PYKMS_TEST_PG_DSN"):
        return Path()
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(
            "PostgreSQL binaries not found (initdb, pg_ctl): install the Debian package postgresql "
            "(.ci/run does) or set PYKMS_PG_BINDIR"
        )
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` account to run the server as")
    return bindir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    """A PostgreSQL cluster in a temporary directory (or an external server when ``external``)."""

    bindir: Path
    root: Path
    port: int
    password: str
    run_as: str | None
    external_dsn: str | None = None
    databases: list[str] = field(default_factory=list)
    _reaper: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @classmethod
    def create(cls, *, extra_conf: dict[str, str] | None = None) -> PgServer:
        """initdb + start; the caller owns it (``destroy()``)."""
        external = os.environ.get("PYKMS_TEST_PG_DSN")
        if external:
            return cls(Path(), Path(), 0, "", None, external_dsn=external)
        bindir = require_postgres()
        run_as = "postgres" if os.geteuid() == 0 else None
        base = Path(tempfile.gettempdir()).resolve()
        if run_as and any(not (p.stat().st_mode & 0o001) for p in (base, *base.parents)):
            pytest.skip(f"{base} is not reachable by the postgres account: set TMPDIR to a world-searchable directory")
        root = Path(tempfile.mkdtemp(prefix="pykms-pg-", dir=base))
        password = secrets.token_hex(12)
        pwfile = root / "pw"
        pwfile.write_text(password + "\n")
        if run_as:
            import pwd

            entry = pwd.getpwnam(run_as)
            os.chown(root, entry.pw_uid, entry.pw_gid)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        os.chmod(root, 0o700)
        pwfile.chmod(0o600)
        server = cls(bindir, root, _free_port(), password, run_as)
        server._run(
            "initdb", "-D", str(server.datadir), "-U", SUPERUSER, "--auth-local=trust",
            "--auth-host=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions", "--no-sync",
        )  # fmt: skip
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(server.port),
            "unix_socket_directories": f"'{root}'",
            "max_connections": "200",
            # fsync stays on: the benchmark measures real commits, and the fault tests kill the server.
            "fsync": "on",
            "log_min_messages": "warning",
        }
        conf.update(extra_conf or {})
        with (server.datadir / "postgresql.conf").open("a") as fh:
            for key, value in conf.items():
                fh.write(f"{key} = {value}\n")
        server._start_reaper()
        server.start()
        return server

    def _start_reaper(self) -> None:
        """A helper process that stops the server and removes its directory once this process is gone, however
        it ends (a killed or timed-out test run must not leave servers behind). It waits for EOF on a pipe whose
        only writer is this process.
        """
        stop = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop"]
        if self.run_as:
            stop = ["runuser", "-u", self.run_as, "--", *stop]
        self._reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER, json.dumps(stop), str(self.root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the test run must not stop the cleanup
        )

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / tool), *args]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    # -- control -------------------------------------------------------------------------------------------------

    @property
    def controllable(self) -> bool:
        return self.external_dsn is None

    def start(self) -> None:
        self._need_control()
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.root / "log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends sessions and shuts down cleanly; ``immediate`` is a crash (recovery on next start)."""
        self._need_control()
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        if not self.controllable:
            return True
        return self._run("pg_ctl", "-D", str(self.datadir), "status", check=False).returncode == 0

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def postmaster_pid(self) -> int:
        self._need_control()
        return int((self.datadir / "postmaster.pid").read_text().split()[0])

    def freeze(self) -> None:
        """SIGSTOP the postmaster and all its children: the server accepts TCP but never answers."""
        for pid in self._server_pids():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self._server_pids():
            os.kill(pid, signal.SIGCONT)

    def _server_pids(self) -> list[int]:
        """The postmaster and its children, from /proc (no procps needed)."""
        parent = self.postmaster_pid()
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # Fields after the parenthesised command name: state, ppid, ...
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    children.append(int(stat.parent.name))
        return [parent, *children]

    def _need_control(self) -> None:
        if not self.controllable:
            pytest.skip("PYKMS_TEST_PG_DSN points at an external server: this test needs to stop/start its own")

    def destroy(self) -> None:
        if self.controllable:
            with contextlib.suppress(Exception):
                self.thaw()
            with contextlib.suppress(Exception):
                self.stop("immediate")
            shutil.rmtree(self.root, ignore_errors=True)
            reaper = self._reaper
            if reaper is not None and reaper.stdin is not None:
                reaper.stdin.close()  # EOF: it finds the server stopped and the directory gone, and exits
                with contextlib.suppress(subprocess.TimeoutExpired):
                    reaper.wait(30)

    # -- DSNs and databases ---------------------------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """A TCP DSN with the password, as an operator's dsn_file would hold."""
        if self.external_dsn is not None:
            info = conninfo_to_dict(self.external_dsn)
            info["dbname"] = dbname
            return make_conninfo(**{k: str(v) for k, v in info.items() if v is not None})
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} password={self.password} dbname={dbname}"

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return name

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn(dbname), autocommit=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    require_postgres()
    server = PgServer.create()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the shared server; its DSN (with password)."""
    pg_server.ensure_running()
    name = pg_server.create_database()
    try:
        yield pg_server.dsn(name)
    finally:
        pg_server.ensure_running()
        pg_server.drop_database(name)


@pytest.fixture
def private_pg() -> Iterator[PgServer]:
    """A server of this test's own (tests that stop, freeze or reconfigure the server)."""
    require_postgres()
    server = PgServer.create()
    try:
        yield server
    finally:
        server.destroy()
