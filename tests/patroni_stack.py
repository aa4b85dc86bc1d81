"""A real high-availability PostgreSQL for the tests: one etcd member and three PostgreSQL nodes under Patroni.

Patroni runs in strict synchronous mode (``synchronous_mode`` and ``synchronous_mode_strict``): a COMMIT returns
only once a synchronous standby has flushed it, Patroni promotes only that standby, and with no standby left the
primary accepts no commit at all. Everything listens on 127.0.0.1 at ports chosen free at run time; everything
lives in one temporary directory (``pykms-ha-*``).

Processes: etcd and each Patroni run in their own process group; Patroni starts its postmaster in a session of
its own and every PostgreSQL child calls setsid(), so "the host" of a node is Patroni's process group plus the
postmaster and its children (found by parent pid in /proc), killed or frozen together.
PostgreSQL refuses to run as root: as in tests/pg.py, Patroni (and so PostgreSQL) runs as the ``postgres`` account
when the tests run as root.

Nothing survives the run: ``destroy()`` (the fixture's finaliser and an atexit hook) kills every process whose
command line names the stack's directory, with their process groups and children, and removes the directory; a
reaper process does the same once the test process is gone however it ended (it waits for EOF on a pipe); and a
new stack first sweeps the directories of earlier runs whose owner process is dead.

Run as a script (``python tests/patroni_stack.py --reap DIR``) it is that reaper.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "pykms-ha-"
SCOPE = "pykms-ha"
SUPERUSER = "pykms_test"
DBNAME = "pykms"

#: Patroni's timing (dynamic configuration). ttl: how long the leader key lives without a refresh (the failover
#: detection time); loop_wait: the HA loop's period; retry_timeout: how long a DCS or PostgreSQL operation is
#: retried before the primary demotes itself. Patroni wants loop_wait + 2 * retry_timeout <= ttl. Overridable
#: (PYKMS_HA_TTL, PYKMS_HA_LOOP_WAIT, PYKMS_HA_RETRY_TIMEOUT) to measure other settings.
TTL_S = int(os.environ.get("PYKMS_HA_TTL", "10"))
LOOP_WAIT_S = int(os.environ.get("PYKMS_HA_LOOP_WAIT", "1"))
RETRY_TIMEOUT_S = int(os.environ.get("PYKMS_HA_RETRY_TIMEOUT", "4"))


def patroni_version() -> tuple[int, ...]:
    out = subprocess.run(["patroni", "--version"], capture_output=True, text=True, timeout=30).stdout.split()
    return tuple(int(x) for x in out[-1].split(".") if x.isdigit()) if out else ()


def use_etcd3() -> bool:
    """Patroni before 3.0.3 must not use etcd's v3 API: its leader-key refresh there is an unconditional write,
    so a primary that was frozen past its ttl and wakes up takes the key back from the standby promoted meanwhile;
    that node is demoted and rewound, and the commits it acknowledged are lost (found by the frozen-primary
    scenario; fixed upstream in patroni/patroni pull request 2689). Its etcd v2 client refreshes the key with a
    compare-and-swap on its own name, which fails once another node holds it.
    """
    return patroni_version() >= (3, 0, 3)


def missing_packages() -> list[str]:
    """The Debian packages this stack needs that are not installed (empty when it can run)."""
    from tests.pg import find_bindir

    missing = []
    if shutil.which("patroni") is None or shutil.which("patronictl") is None:
        missing.append("patroni")
    if shutil.which("etcd") is None:
        missing.append("etcd-server")
    if find_bindir() is None:
        missing.append("postgresql")
    return missing


def free_port() -> int:
    from tests.pg import _free_port

    return _free_port()


# -- process bookkeeping through /proc (no procps needed) -----------------------------------------------------------


def _proc_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _start_time(pid: int) -> str:
    return _proc_stat(pid)[19]


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, process group) of every process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _proc_stat(int(stat.parent.name))
            out[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))
    return out


def _with_family(pids: set[int], table: dict[int, tuple[int, int]]) -> set[int]:
    """``pids``, the members of their process groups and all their descendants. PostgreSQL's children each call
    setsid(), so a postmaster's process group holds only itself: its children are found by parent pid.
    """
    groups = {table[p][1] for p in pids if p in table} - {os.getpgrp(), 0, 1}
    out = set(pids) | {p for p, (_, g) in table.items() if g in groups}
    while True:
        more = {p for p, (pp, _) in table.items() if pp in out} - out
        if not more:
            return out - {os.getpid()}
        out |= more


def _pids_naming(root: Path) -> set[int]:
    """Processes whose command line contains the stack's directory (etcd, Patroni, postmasters), not reapers."""
    needle = str(root).encode()
    out = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError, ValueError):
            text = cmdline.read_bytes()
            if needle in text and b"--reap" not in text and int(cmdline.parent.name) != os.getpid():
                out.add(int(cmdline.parent.name))
    return out


def signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def sweep(root: Path) -> None:
    """SIGKILL every process of the stack in ``root`` with its children (frozen ones too), then remove ``root``."""
    for _ in range(3):
        pids = _pids_naming(root)
        if not pids:
            break
        family = _with_family(pids, _table())
        signal_all(family, signal.SIGKILL)
        signal_all(family, signal.SIGCONT)
        time.sleep(0.3)
    shutil.rmtree(root, ignore_errors=True)


def sweep_leftovers(base: Path) -> None:
    """Remove the stacks of earlier runs whose owner process is gone (a run killed before its cleanup)."""
    for root in base.glob(PREFIX + "*"):
        try:
            owner = json.loads((root / "owner.json").read_text())
            alive = _start_time(int(owner["pid"])) == owner["start"]
        except (OSError, ValueError, KeyError, IndexError):
            alive = False
        if not alive:
            sweep(root)


# -- the stack -------------------------------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    root: Path
    pg_port: int
    api_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.root / "patroni.yml"

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            if _proc_stat(pid)[0] != "Z":  # a killed postmaster stays a zombie until init reaps it
                return pid
        return None

    def host_pids(self) -> set[int]:
        """Every process of this node's host: Patroni's process group, the postmaster and its children."""
        roots = set()
        if self.proc is not None and self.proc.poll() is None:
            roots.add(self.proc.pid)
        pm = self.postmaster_pid()
        if pm is not None:
            roots.add(pm)
        return _with_family(roots, _table()) if roots else set()

    def api(self, path: str = "/patroni", timeout: float = 2) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body) of this node's Patroni REST API; (0, {}) when it does not answer."""
        url = f"http://127.0.0.1:{self.api_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            with contextlib.suppress(ValueError):
                return exc.code, json.loads(exc.read() or b"{}")
            return exc.code, {}
        except (OSError, ValueError):
            return 0, {}


@dataclass
class PatroniStack:
    """etcd + three Patroni/PostgreSQL nodes; ``create()`` starts it and waits until it is healthy."""

    root: Path
    bindir: Path
    run_as: str | None
    password: str
    etcd_port: int
    etcd_peer_port: int
    nodes: list[Node] = field(default_factory=list)
    etcd: subprocess.Popen[bytes] | None = None
    _reaper: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _destroyed: bool = False

    @classmethod
    def create(cls, *, n: int = 3) -> PatroniStack:
        from tests.pg import require_postgres

        bindir = require_postgres()
        run_as = "postgres" if os.geteuid() == 0 else None
        base = Path(tempfile.gettempdir()).resolve()
        sweep_leftovers(base)
        root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
        (root / "owner.json").write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid())}))
        stack = cls(root, bindir, run_as, secrets.token_hex(12), free_port(), free_port())
        stack._start_reaper()
        atexit.register(stack.destroy)
        try:
            for i in range(n):
                node_root = root / f"pg{i}"
                node_root.mkdir(mode=0o700)
                stack.nodes.append(Node(f"pg{i}", node_root, free_port(), free_port()))
            stack._write_configs()
            stack.start_etcd()
            for node in stack.nodes:
                stack.start_node(node)
            stack.wait_healthy(timeout=120)
            with stack.connect() as conn:
                conn.execute(f"CREATE DATABASE {DBNAME}")
        except BaseException:
            stack.destroy()
            raise
        return stack

    def _start_reaper(self) -> None:
        self._reaper = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--reap", str(self.root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C to the test run must not stop the cleanup
        )

    def _write_configs(self) -> None:
        hosts = f"127.0.0.1:{self.etcd_port}"
        dcs = {"etcd3": {"hosts": hosts}} if use_etcd3() else {"etcd": {"hosts": hosts}}
        for node in self.nodes:
            conf = {
                "scope": SCOPE,
                "name": node.name,
                "restapi": {"listen": f"127.0.0.1:{node.api_port}", "connect_address": f"127.0.0.1:{node.api_port}"},
                **dcs,
                "bootstrap": {
                    "dcs": {
                        "ttl": TTL_S,
                        "loop_wait": LOOP_WAIT_S,
                        "retry_timeout": RETRY_TIMEOUT_S,
                        "synchronous_mode": True,
                        "synchronous_mode_strict": True,
                        "synchronous_node_count": 1,
                        "postgresql": {
                            "use_pg_rewind": True,
                            "use_slots": True,
                            "parameters": {
                                "wal_level": "replica",
                                "wal_log_hints": "on",
                                "hot_standby": "on",
                                "max_connections": 100,
                                "max_wal_senders": 10,
                                "max_replication_slots": 10,
                                "fsync": "on",
                                "synchronous_commit": "on",
                                # After a promotion the other standby must stream from the new primary before
                                # anything commits (strict mode); its default 5 s between attempts is the gap.
                                "wal_retrieve_retry_interval": "500ms",
                            },
                        },
                    },
                    "initdb": [{"encoding": "UTF8"}, {"auth-local": "trust"}, {"auth-host": "scram-sha-256"}],
                    "pg_hba": [
                        "local all all trust",
                        "host replication replicator 127.0.0.1/32 scram-sha-256",
                        "host all all 127.0.0.1/32 scram-sha-256",
                    ],
                },
                "postgresql": {
                    "listen": f"127.0.0.1:{node.pg_port}",
                    "connect_address": f"127.0.0.1:{node.pg_port}",
                    "data_dir": str(node.datadir),
                    "bin_dir": str(self.bindir),
                    "pgpass": str(node.root / "pgpass"),
                    "remove_data_directory_on_rewind_failure": True,
                    "remove_data_directory_on_diverged_timelines": True,
                    "authentication": {
                        "superuser": {"username": SUPERUSER, "password": self.password},
                        "replication": {"username": "replicator", "password": self.password},
                        "rewind": {"username": SUPERUSER, "password": self.password},
                    },
                    "parameters": {"unix_socket_directories": str(node.root), "log_min_messages": "warning"},
                },
            }
            # JSON is YAML: no YAML writer needed.
            node.config.write_text(json.dumps(conf, indent=1))
            node.config.chmod(0o600)
        if self.run_as:
            import pwd

            entry = pwd.getpwnam(self.run_as)
            for path in [self.root, *self.root.rglob("*")]:
                os.chown(path, entry.pw_uid, entry.pw_gid)

    # -- processes ----------------------------------------------------------------------------------------------------

    def _spawn(self, cmd: list[str], log: Path, *, as_pg: bool) -> subprocess.Popen[bytes]:
        if as_pg and self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        with open(log, "ab") as fh:
            return subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def start_etcd(self) -> None:
        data = self.root / "etcd"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        self.etcd = self._spawn(
            ["etcd", "--name", "e0", "--data-dir", str(data), "--listen-client-urls", client,
             "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"e0={peer}", "--initial-cluster-state", "new", "--log-level", "warn",
             f"--enable-v2={'false' if use_etcd3() else 'true'}"],
            self.root / "etcd.log", as_pg=False,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(client + "/health", timeout=1) as resp:
                if json.loads(resp.read()).get("health") == "true":
                    return
            time.sleep(0.2)
        raise RuntimeError(f"etcd did not become healthy:\n{(self.root / 'etcd.log').read_text()[-3000:]}")

    def kill_etcd(self) -> None:
        if self.etcd is not None and self.etcd.poll() is None:
            os.killpg(self.etcd.pid, signal.SIGKILL)
            self.etcd.wait()

    def start_node(self, node: Node) -> None:
        node.proc = self._spawn(["patroni", str(node.config)], node.root / "patroni.log", as_pg=True)

    def kill_host(self, *nodes: Node) -> None:
        """SIGKILL the nodes' Patroni and PostgreSQL (postmaster and every backend), all at once."""
        signal_all({pid for node in nodes for pid in node.host_pids()}, signal.SIGKILL)
        for node in nodes:
            if node.proc is not None:
                node.proc.wait()
            deadline = time.monotonic() + 10
            while node.postmaster_pid() is not None and time.monotonic() < deadline:
                time.sleep(0.05)

    def freeze_host(self, node: Node) -> set[int]:
        """SIGSTOP every process of the node's host; returns them, to thaw."""
        pids = node.host_pids()
        signal_all(pids, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: set[int]) -> None:
        signal_all(pids, signal.SIGCONT)

    def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        keep = os.environ.get("PYKMS_HA_KEEP_LOGS")  # a directory to copy the logs to, for a post-mortem
        if keep:
            for log in self.root.rglob("*.log"):
                dest = Path(keep) / log.relative_to(self.root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    shutil.copyfile(log, dest)
        sweep(self.root)
        reaper = self._reaper
        if reaper is not None and reaper.stdin is not None:
            reaper.stdin.close()  # EOF: it finds nothing left and exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                reaper.wait(30)

    # -- state ----------------------------------------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """Patroni's view of the cluster (name, role, state, timeline), from the first node that answers."""
        for node in self.nodes:
            status, body = node.api("/cluster", timeout=1)
            if status == 200 and "members" in body:
                return list(body["members"])
        return []

    def leader(self) -> Node | None:
        for m in self.members():
            if m.get("role") == "leader" and m.get("state") == "running":
                return self.node(m["name"])
        return None

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def sync_standbys(self) -> list[str]:
        return [m["name"] for m in self.members() if m.get("role") == "sync_standby"]

    def wait_healthy(self, timeout: float = 90) -> Node:
        """Until one leader, a synchronous standby and every node streaming; returns the leader."""
        deadline = time.monotonic() + timeout
        members: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            members = self.members()
            roles = sorted(m.get("role", "") for m in members)
            running = all(m.get("state") in ("running", "streaming") for m in members)
            if len(members) == len(self.nodes) and running and roles.count("leader") == 1 and "sync_standby" in roles:
                leader = self.leader()
                if leader is not None:
                    with contextlib.suppress(Exception), self.connect(leader) as conn:
                        conn.execute("SELECT 1")
                        return leader
            time.sleep(0.5)
        raise RuntimeError(f"the Patroni cluster is not healthy after {timeout} s: {members}\n{self.logs_tail()}")

    def wait_leader(self, *, other_than: Node | None = None, timeout: float = 60) -> Node:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader is not other_than:
                return leader
            time.sleep(0.2)
        raise RuntimeError(f"no new leader after {timeout} s: {self.members()}\n{self.logs_tail()}")

    def logs_tail(self, chars: int = 1500) -> str:
        out = []
        for log in sorted(self.root.rglob("*.log")):
            with contextlib.suppress(OSError):
                out.append(f"--- {log.relative_to(self.root)}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(out)

    # -- DSNs -----------------------------------------------------------------------------------------------------

    def dsn(self, dbname: str = DBNAME) -> str:
        """The multi-host DSN pykms is given: every node, and libpq keeps the one that accepts writes."""
        hosts = ",".join("127.0.0.1" for _ in self.nodes)
        ports = ",".join(str(n.pg_port) for n in self.nodes)
        return (
            f"host={hosts} port={ports} user={SUPERUSER} password={self.password} dbname={dbname} "
            "target_session_attrs=read-write connect_timeout=2"
        )

    def node_dsn(self, node: Node, dbname: str = DBNAME) -> str:
        return f"host=127.0.0.1 port={node.pg_port} user={SUPERUSER} password={self.password} dbname={dbname}"

    def connect(self, node: Node | None = None, dbname: str = "postgres") -> Any:
        import psycopg

        dsn = self.node_dsn(node, dbname) if node is not None else self.dsn(dbname)
        return psycopg.connect(dsn, autocommit=True, connect_timeout=3)

    def patronictl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = ["patronictl", "-c", str(self.nodes[0].config), *args]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _reap(root: Path) -> None:
    sys.stdin.read()  # EOF once the test process is gone, however it ended
    sweep(root)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--reap":
    _reap(Path(sys.argv[2]))
