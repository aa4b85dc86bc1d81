"""``pykms-yubihsm-sim``: the device simulator behind a yubihsm-connector-compatible HTTP API.

yubihsm-connector (Yubico) exposes ``GET /connector/status`` (``key=value`` lines: status, serial, version,
pid, address, port) and ``POST /connector/api`` whose body is one raw command frame and whose response body is
the device's raw reply (Yubico docs, yubihsm-connector; python-yubihsm ``backends/http.py`` posts
``application/octet-stream`` to ``connector/api``). This edge adds the state file, so objects survive a restart,
and fault switches for tests: drop connections, answer HTTP 500, expire sessions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pykms.errors import KeyFileError
from pykms.harness.yubihsm_sim.device import MAX_FRAME, Device
from pykms.httpreply import send_reply
from pykms.keyfiles import fsync_dir, read_secret_file, write_secret_file

__all__ = ["Faults", "SimServer", "main"]

#: Version string reported on /connector/status, in yubihsm-connector's format.
CONNECTOR_VERSION = "3.0.5"


@dataclass
class Faults:
    """Fault switches, flipped by tests (or over ``POST /sim/faults`` with a JSON body)."""

    #: Close the TCP connection without answering (a vanished connector).
    drop_connections: bool = False
    #: Answer every API request with HTTP 500 (a connector that lost its device).
    http_500: bool = False
    #: Let the device process each request, then close the connection without the reply (a link lost
    #: mid-request: the device's state moved on, the client never learns how).
    drop_replies: bool = False


class SimServer:
    """A Device, a lock, an optional state file and a ThreadingHTTPServer on ``host:port``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        state_file: Path | None = None,
        device: Device | None = None,
    ):
        self.device = device or Device()
        self.state_file = state_file
        self.faults = Faults()
        self.lock = threading.Lock()
        saved = None
        if state_file is not None and state_file.exists():
            try:  # it holds the device's keys: refused when others can read it, as any key file
                saved = read_secret_file(state_file)
            except KeyFileError as exc:
                raise KeyFileError(f"cannot read the state file: {exc}") from None
        if saved is not None:
            self.device.load_state(json.loads(saved))
        self.httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self.httpd.daemon_threads = True
        if saved is None:
            self._persist()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def transceive(self, frame: bytes) -> bytes:
        with self.lock:
            reply, changed = self.device.process(frame)
            if changed:
                self._persist()
        return reply

    def expire_sessions(self) -> None:
        with self.lock:
            self.device.expire_sessions()

    def _persist(self) -> None:
        """Write the state file atomically and durably (temp file, fsync, rename, fsync directory)."""
        if self.state_file is None:
            return
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        try:
            write_secret_file(tmp, json.dumps(self.device.to_state(), indent=1).encode(), overwrite=True)
        except KeyFileError as exc:
            raise KeyFileError(f"cannot write the state file: {exc}") from None
        os.replace(tmp, self.state_file)
        fsync_dir(self.state_file.parent)

    def start(self) -> SimServer:
        """Serve in a daemon thread (for tests and embedding)."""
        # A short poll interval so stop() returns promptly (serve_forever checks for shutdown between polls).
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="yubihsm-sim", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _handler_for(sim: SimServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out as separate writes: without TCP_NODELAY, Nagle plus delayed ACK adds ~40 ms
        # to every request.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _drop(self) -> bool:
            if sim.faults.drop_connections:
                self._hang_up()
                return True
            return False

        def _hang_up(self) -> None:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def do_GET(self) -> None:
            if self._drop():
                return
            if self.path.split("?")[0] != "/connector/status":
                send_reply(self, 404, b"not found\n", "text/plain")
                return
            status = "NO_DEVICE" if sim.faults.http_500 else "OK"
            host, port = str(sim.httpd.server_address[0]), sim.port
            text = (
                f"status={status}\nserial={sim.device.serial}\nversion={CONNECTOR_VERSION}\n"
                f"pid={os.getpid()}\naddress={host}\nport={port}\n"
            )
            send_reply(self, 200, text.encode(), "text/plain")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_FRAME + 16:
                send_reply(self, 413, b"frame too long\n", "text/plain")
                return
            body = self.rfile.read(length)
            if self.path == "/sim/faults":
                self._set_faults(body)
                return
            if self._drop():
                return
            if self.path != "/connector/api":
                send_reply(self, 404, b"not found\n", "text/plain")
                return
            if sim.faults.http_500:
                send_reply(self, 500, b"device unavailable\n", "text/plain")
                return
            if sim.faults.drop_replies:
                sim.transceive(body)
                self._hang_up()
                return
            send_reply(self, 200, sim.transceive(body), "application/octet-stream")

        def _set_faults(self, body: bytes) -> None:
            try:
                wanted = json.loads(body or b"{}")
                for switch in fields(Faults):
                    setattr(sim.faults, switch.name, bool(wanted.get(switch.name, False)))
                if wanted.get("expire_sessions"):
                    sim.expire_sessions()
            except (ValueError, AttributeError):
                send_reply(self, 400, b"expected a JSON object\n", "text/plain")
                return
            send_reply(self, 200, b"ok\n", "text/plain")

    return Handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until interrupted."""
    parser = argparse.ArgumentParser(
        prog="pykms-yubihsm-sim", description="YubiHSM2 simulator with a yubihsm-connector HTTP API"
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=12345, help="listen port (default 12345, as the connector)")
    parser.add_argument("--state", type=Path, default=None, help="state file: objects persist across restarts")
    parser.add_argument("--serial", type=int, default=12345678, help="device serial number for a new state")
    parser.add_argument("--idle-timeout", type=float, default=30.0, help="session idle timeout in seconds (device: 30)")
    args = parser.parse_args(argv)
    device = Device(args.serial, idle_timeout=args.idle_timeout)
    try:
        sim = SimServer(args.host, args.port, state_file=args.state, device=device)
    except OSError as exc:
        print(f"pykms-yubihsm-sim: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    except (ValueError, KeyError) as exc:
        print(f"pykms-yubihsm-sim: state file {args.state} is not valid: {exc}", file=sys.stderr)
        return 1
    except KeyFileError as exc:
        print(f"pykms-yubihsm-sim: {exc}", file=sys.stderr)
        return 1
    print(f"pykms-yubihsm-sim: serial {sim.device.serial} listening on http://{args.host}:{sim.port}", flush=True)
    try:
        sim.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sim.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
