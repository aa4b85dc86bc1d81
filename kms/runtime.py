"""The daemon's front: one thread per ``[[validator]]`` connection, a key holder for the keys, clean shutdown.

Why threads and not asyncio here: a validator connection is a strict request/response loop whose every step
(read, decrypt, decide, sign, fsync, reply) is either a blocking syscall that releases the GIL or a short
computation. Blocking sockets in a thread per connection avoid an event-loop wake-up and two executor hand-offs
per request, which is most of the overhead left once the state costs a single flush. The chain's lock lives in
the key holder (``pykms.keyholder``), which serialises every connection to one chain.

Lifecycle of a session: dial (TCP or unix socket) -> SecretConnection handshake on TCP (pin the peer ID when
configured) -> serve requests until the link drops, idles out or sends something we refuse -> back off with
capped exponential delay and jitter -> dial again (unless ``reconnect = false``).

Shutdown (SIGINT/SIGTERM): the stop event is set and every socket is shut down, which wakes blocked reads. A
session in the middle of a signature finishes its critical section (the state is written atomically or not at
all), so the process never leaves a half-written state.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import signal
import socket
import threading
import time
from typing import Any

from nacl.signing import SigningKey

from pykms.config import KmsConfig, ValidatorConfig
from pykms.errors import ConfigError, KmsError, LinkTimeout, ProtocolError
from pykms.extensions import ExtensionPlan, plan_extensions
from pykms.handler import LogObserver, Observer, RequestHandler
from pykms.keyholder.api import ChainKey, KeyHolder
from pykms.logconfig import get_logger
from pykms.privval.codec import MAX_REQUEST_BYTES, Dialect, MessageReader, delimit
from pykms.secretconn.sync import BlockingPlainStream, BlockingSecretStream, set_kernel_timeouts

__all__ = ["Runtime", "open_keyholder"]

#: A link that completes no message for this long is dead: the node pings every ~3.3 s (docs/protocol.md §2.1),
#: so 20 s is six missed pings. Also bounds how long a slow-loris peer can hold a connection.
IDLE_TIMEOUT_S = 20.0
#: The node's accept and handshake deadlines are 3 s and 5 s; a dial that takes longer will fail anyway.
CONNECT_TIMEOUT_S = 5.0
HANDSHAKE_TIMEOUT_S = 5.0
#: Total time one reply may take to write, however the peer drips its receive window open: a node gives up on a
#: reply after a few seconds anyway, and a peer that does not read must not keep the session thread (or, with
#: it, anything shared) for longer. Over it, the connection is closed.
REPLY_WRITE_TIMEOUT_S = 2.0
#: How long one request waits for a key holder that went away to come back: the supervisor restarts it within
#: about a second, and the node must get "unable to sign" well inside its own deadline rather than a hang.
KEYHOLDER_RECONNECT_S = 1.0
#: How long a starting front waits for its key holder's first answer (the supervisor starts it after "ready").
KEYHOLDER_START_S = 30.0


#: SecretConnection over TCP, or plain over a unix socket.
SyncStream = BlockingSecretStream | BlockingPlainStream


def backoff_delay(attempt: int) -> float:
    """Capped exponential backoff (0.1 s doubling up to 10 s) with jitter in [delay/2, delay]."""
    return min(10.0, 0.1 * 2.0 ** min(attempt, 32)) * random.uniform(0.5, 1.0)


class _Session:
    """One ``[[validator]]`` entry: a thread that keeps a connection to the node alive and serves it."""

    def __init__(
        self,
        runtime: Runtime,
        index: int,
        cfg: ValidatorConfig,
        key: ChainKey,
        plan: ExtensionPlan,
        identity: SigningKey | None,
    ) -> None:
        self.runtime = runtime
        self.cfg = cfg
        self.identity = identity
        self.addr = cfg.parsed_addr
        #: tmkms's [[validator]] timeout (src/connection/tcp.rs: connect, read and write timeout of a TCP link;
        #: Unix sockets take none there either): here the dial, the handshake and the idle read.
        tcp_timeout = float(cfg.timeout) if cfg.timeout is not None and self.addr.scheme == "tcp" else None
        self.connect_timeout = tcp_timeout or CONNECT_TIMEOUT_S
        self.handshake_timeout = tcp_timeout or HANDSHAKE_TIMEOUT_S
        self.idle_timeout = tcp_timeout or IDLE_TIMEOUT_S
        self.log = get_logger("pykms.session", chain_id=cfg.chain_id, validator=self.addr.display)
        observers: list[Observer] = [LogObserver(self.log)]
        if runtime.metrics is not None:
            observers.append(runtime.metrics)
        assert runtime.keyholder is not None
        self.handler = RequestHandler(
            runtime.keyholder,
            key,
            Dialect.parse(plan.dialect),
            chain_id=cfg.chain_id,
            max_height=cfg.max_height,
            sign_extensions=plan.sign_extensions,
            observers=observers,
            log=self.log,
        )
        self.thread = threading.Thread(target=self.run, name=f"validator-{index}", daemon=True)
        self.sock: socket.socket | None = None
        self.connected = threading.Event()
        self.reconnects = 0

    def run(self) -> None:
        failures = 0
        stop = self.runtime.stop_event
        while not stop.is_set():
            stream: SyncStream | None = None
            try:
                stream = self._connect()
                failures = 0
                self.connected.set()
                self._count_connection(1)
                self.log.info("validator_connected", peer_id=getattr(stream, "remote_id", None))
                self._serve(stream)
            except ProtocolError as exc:
                self.log.warning("connection_closed", reason=str(exc), error=type(exc).__name__)
            except OSError as exc:
                if not stop.is_set():
                    self.log.warning("connection_failed", reason=exc.strerror or str(exc))
            except KmsError as exc:
                self.log.error("session_error", reason=str(exc), error=type(exc).__name__)
            except Exception as exc:  # a bug must cost one connection, never the session thread
                self.log.error("session_crashed", error=type(exc).__name__, exc_info=True)
            finally:
                was_connected = self.connected.is_set()
                self.connected.clear()
                if stream is not None:
                    stream.close()
                self._close_sock()
                if was_connected:
                    self._count_connection(0)
            if not self.cfg.reconnect or stop.is_set():
                break
            self.reconnects += 1
            stop.wait(backoff_delay(failures))
            failures += 1
        self.log.info("session_stopped")

    def _connect(self) -> SyncStream:
        addr = self.addr
        if addr.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock = sock
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(str(addr.path))
            set_kernel_timeouts(sock, IDLE_TIMEOUT_S)
            return BlockingPlainStream(sock)
        assert addr.host is not None and addr.port is not None and self.identity is not None
        sock = socket.create_connection((addr.host, addr.port), timeout=self.connect_timeout)
        self.sock = sock
        # Requests and replies are small and strictly alternating: Nagle would only add latency.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        from pykms.secretconn.sync import secret_connection_sync

        stream = secret_connection_sync(
            sock, self.identity, expected_peer_id=addr.peer_id, timeout=self.handshake_timeout
        )
        set_kernel_timeouts(sock, self.idle_timeout)
        if addr.peer_id is None:
            self.log.warning(
                "peer_not_pinned",
                hint="set addr = tcp://ID@host:port to pin the node; note the node makes a new ID at every start",
            )
        return stream

    def _serve(self, stream: SyncStream) -> None:
        reader = MessageReader(MAX_REQUEST_BYTES)
        send = stream.send

        def reply(body: bytes) -> None:
            try:
                send(delimit(body), REPLY_WRITE_TIMEOUT_S)
            except LinkTimeout:
                raise ProtocolError(
                    f"the validator did not take its reply within {REPLY_WRITE_TIMEOUT_S:g} s; closing the connection"
                ) from None

        last_message = time.monotonic()
        stop = self.runtime.stop_event
        while not stop.is_set():
            try:
                data = stream.recv()
            except LinkTimeout:
                raise ProtocolError(f"no request for {self.idle_timeout:.0f} s; the link is considered dead") from None
            if not data:
                raise ProtocolError("the validator closed the connection")
            bodies = reader.feed(data)
            now = time.monotonic()
            if bodies:
                last_message = now
            elif now - last_message > self.idle_timeout:
                raise ProtocolError(f"no complete request for {self.idle_timeout:.0f} s (slow peer); closing")
            for body in bodies:
                self.handler.handle(body, reply)

    def _count_connection(self, up: int) -> None:
        metrics = self.runtime.metrics
        if metrics is None:
            return
        metrics.connected.labels(self.cfg.chain_id, self.addr.display).set(up)
        if up and self.reconnects:
            metrics.reconnects.labels(self.cfg.chain_id, self.addr.display).inc()

    def abort(self) -> None:
        """Wake a blocked read so the thread sees the stop event."""
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _close_sock(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class Runtime:
    """Builds chains (key + guard) from the config and runs one session per validator."""

    def __init__(self, config: KmsConfig) -> None:
        self.config = config
        self.log = get_logger("pykms")
        self.stop_event = threading.Event()
        self.keyholder: KeyHolder | None = None
        #: The chains served (chain id -> its key), as the key holder reports them.
        self.chains: dict[str, ChainKey] = {}
        self.sessions: list[_Session] = []
        self.failed_chains: dict[str, str] = {}
        self.metrics: Any = None
        self.metrics_server: Any = None

    # Construction -----------------------------------------------------------------------------------

    def build(self) -> None:
        """Open keys and guard state (the key holder); a chain whose state cannot be trusted is stopped."""
        from pykms.secretconn.identity import load_identity

        keyholder = self.keyholder = open_keyholder(self.config)
        self.chains = _first_chains(keyholder)
        self.failed_chains = {
            chain_id: why.removeprefix("stopped: ")
            for chain_id, why in keyholder.health().items()
            if chain_id not in self.chains
        }
        self._setup_metrics()
        for index, validator in enumerate(self.config.validators):
            key = self.chains.get(validator.chain_id)
            if key is None:
                continue
            plan = self._extension_plan(validator, key)
            if plan.note:
                self.log.warning("protocol_version_overridden", chain_id=validator.chain_id, note=plan.note)
            if validator.timeout is not None and validator.parsed_addr.scheme == "unix":
                self.log.warning("timeout_ignored", chain_id=validator.chain_id, reason="unix sockets take no timeout")
            identity = None
            if validator.parsed_addr.scheme == "tcp":  # a missing or too-open identity key stops start-up
                assert validator.secret_key is not None, "load_config refuses a tcp:// validator without secret_key"
                identity = load_identity(validator.secret_key)
            self.sessions.append(_Session(self, index, validator, key, plan, identity))

    def _extension_plan(self, validator: ValidatorConfig, key: ChainKey) -> ExtensionPlan:
        """tmkms's protocol_version x sign_extensions for this validator (pykms.extensions); refusals name the file."""
        chain_cfg = next(c for c in self.config.chains if c.id == validator.chain_id)
        ledgers = self.config.providers.ledger
        if any(entry.extensions_disabled and validator.chain_id in entry.chain_ids for entry in ledgers):
            wanted: bool | None = False  # [[providers.ledger]] extensions_disabled = true: the same, pykms's way
        else:
            wanted = chain_cfg.sign_extensions
        return plan_extensions(
            validator.protocol_version,
            wanted,
            signs_extensions=key.signs_extensions,
            chain_id=validator.chain_id,
            file=str(self.config.path),
        )

    def _setup_metrics(self) -> None:
        if self.config.metrics is None:
            return
        from pykms.keyholder.local import LocalKeyHolder
        from pykms.metrics import Metrics, MetricsServer

        metrics = self.metrics = Metrics()
        local = self.keyholder
        for chain_id in self.chains:
            if not isinstance(local, LocalKeyHolder):  # provider, guard and audit log live in the key holder's process
                metrics.attach_chain(chain_id, provider="keyholder", backend="keyholder")
                continue
            metrics.attach_chain(
                chain_id,
                provider=local.signer(chain_id).provider,
                backend=local.guard(chain_id).backend,
                audit=local.audit_log(chain_id),
            )
        host, _, port = self.config.metrics.addr.rpartition(":")
        self.metrics_server = MetricsServer(host or "127.0.0.1", int(port), metrics, self.health)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while every configured chain has a live validator connection and a writable state."""
        details: dict[str, Any] = {}
        try:
            keyholder_health = self.keyholder.health() if self.keyholder is not None else {}
        except KmsError as exc:  # a key holder in another process that is down or restarting
            keyholder_health = {chain.id: f"key holder unreachable: {exc}" for chain in self.config.chains}
        for chain_cfg in self.config.chains:
            problems = []
            if not any(s.connected.is_set() for s in self.sessions if s.cfg.chain_id == chain_cfg.id):
                problems.append("no live validator connection")
            if (held := keyholder_health.get(chain_cfg.id, "ok")) != "ok":  # stopped, state, audit log
                problems.append(held)
            details[chain_cfg.id] = "; ".join(problems) or "ok"
        return all(v == "ok" for v in details.values()), details

    # Running ----------------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stop_event.set()
        for session in self.sessions:
            session.abort()

    def close(self) -> None:
        if self.metrics_server is not None:
            with contextlib.suppress(Exception):
                self.metrics_server.stop()
        if self.keyholder is not None:
            with contextlib.suppress(Exception):
                self.keyholder.close()

    def run_forever(self) -> int:
        """Serve until SIGINT/SIGTERM or until every session has ended (reconnect = false)."""
        if not self.sessions:
            self.log.error("nothing_to_serve", failed_chains=self.failed_chains)
            return 5 if self.failed_chains else 3

        def _on_signal(signum: int, _frame: Any) -> None:
            self.log.info("shutdown_requested", signal=signal.Signals(signum).name)
            self.stop()

        previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        # Everything built so far (modules, config, keys, protobuf classes) lives as long as the process: move it
        # out of the collector's sight, so the occasional full collection scans only what signing allocates
        # (a full scan of the start-up heap is a latency spike of ~6 ms in the benchmark). No gc.collect() first: it
        # would delay the first signature by ~20 ms to free a few start-up cycles.
        gc.freeze()
        try:
            if self.metrics_server is not None:
                self.metrics_server.start()
                host, port = self.metrics_server.address
                self.log.info("metrics_listening", addr=f"{host}:{port}")
            for session in self.sessions:
                session.thread.start()
            self.log.info("pykms_started", chains=sorted(self.chains), validators=len(self.sessions))
            while not self.stop_event.is_set() and any(s.thread.is_alive() for s in self.sessions):
                self.stop_event.wait(0.5)
            self.stop()
            deadline = time.monotonic() + 10
            for session in self.sessions:
                session.thread.join(max(0.0, deadline - time.monotonic()))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.close()
        self.log.info("pykms_stopped")
        return 0


def open_keyholder(config: KmsConfig) -> KeyHolder:
    """The front's key holder: the supervisor's (``PYKMS_KEYHOLDER_ADDR``), an external one (``[keyholder] addr``),
    or the keys in this process (``isolation = "none"``). A remote one is only connected to: no key is loaded here."""
    from pykms.keyholder.client import RemoteKeyHolder, parse_unix_addr
    from pykms.keyholder.process import ADDR_ENV

    addr = os.environ.get(ADDR_ENV)
    if addr:
        try:
            path = parse_unix_addr(addr)
        except ValueError as exc:
            raise ConfigError(str(exc), key=ADDR_ENV, fix="unset it, or give unix:///absolute/path.sock") from None
        return RemoteKeyHolder(path, reconnect_s=KEYHOLDER_RECONNECT_S)
    if config.keyholder.addr is not None:
        return RemoteKeyHolder(config.keyholder.addr, reconnect_s=KEYHOLDER_RECONNECT_S)
    from pykms.keyholder.local import LocalKeyHolder

    return LocalKeyHolder(config)


def _first_chains(keyholder: KeyHolder, wait_s: float = KEYHOLDER_START_S) -> dict[str, ChainKey]:
    """The chains served, waiting a while for a key holder that is still starting."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return keyholder.chains()
        except KmsError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
