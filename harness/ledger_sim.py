"""A simulator of the Ledger Tendermint validator app, speaking speculos's APDU-over-TCP framing.

Operators rehearse a Ledger flow without hardware, and the tests drive the real ``ledgerblue`` TCP transport
(``ledgerblue.commTCP``) against it. Run it as ``pykms-ledger-sim --port PORT --seed-file FILE``.

What it reproduces of the app (facts from tmkms's ledgertm provider and the app's documented behaviour; our own
code): CLA 0x56; INS 0x00 GET_VERSION (mode, major, minor, patch), 0x01 PUBLIC_KEY_ED25519 (32 raw bytes),
0x02 SIGN_ED25519 with the message in chunks, P1 = 1-based chunk index and P2 = chunk count; the app parses the
sign bytes itself (type, height, round of the canonical vote or proposal) and keeps its own watermark: it refuses
anything not strictly after the last thing it signed (0x6985). The first signature after the app starts needs the
operator's approval on the device (a simulated button: ``--button accept|reject``); a rejected approval leaves
the app uninitialised (0x6986). Messages over 128 bytes are refused (0x6700), as are sign bytes it cannot parse
(0x6984).

Framing (speculos, as ledgerblue's DongleServer speaks it): request = 4-byte big-endian length + APDU; response =
4-byte big-endian length of the data + data + 2-byte status word.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import socketserver
import struct
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from nacl.signing import SigningKey

from pykms.errors import DecodeError, KeyFileError
from pykms.keyfiles import read_secret_file, write_secret_file
from pykms.privval.varint import decode_uvarint
from pykms.providers.ledger import CLA, INS_GET_VERSION, INS_PUBLIC_KEY_ED25519, INS_SIGN_ED25519, MAX_MESSAGE

__all__ = ["SW", "LedgerApp", "LedgerSimServer", "main", "parse_sign_bytes"]

APP_VERSION = (0, 2, 4, 0)  # mode (0 = release), major, minor, patch

# Canonical message types (cometbft SignedMsgType) and the watermark order of their steps.
_STEP_OF_TYPE = {32: 1, 1: 2, 2: 3}


class SW:
    """Status words the app answers (ISO 7816 values the Ledger SDK uses)."""

    OK = 0x9000
    WRONG_LENGTH = 0x6700
    INVALID_DATA = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985  # the watermark refuses
    COMMAND_NOT_ALLOWED = 0x6986  # not initialised: the first signature was not approved
    WRONG_P1P2 = 0x6B00
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00


def parse_sign_bytes(message: bytes) -> tuple[int, int, int]:
    """(type, height, round) of delimited CanonicalVote/CanonicalProposal sign bytes: fields 1 (varint), 2 and 3
    (sfixed64), read loosely as the app does, whatever the other fields hold. ValueError if they do not parse."""
    try:
        head = decode_uvarint(message)
        if head is None or head[0] + head[1] != len(message):
            raise ValueError("length prefix does not match")
        body = empty_pb2.Empty()  # no fields of its own: every field lands in the unknown-field set
        body.ParseFromString(message[head[1] :])
    except (DecodeError, ProtobufDecodeError) as exc:
        raise ValueError(f"not protobuf: {exc}") from None
    fields = {(f.field_number, f.wire_type): f.data for f in iter(UnknownFieldSet(body))}

    def sfixed64(number: int) -> int:
        return int(struct.unpack("<q", struct.pack("<Q", fields.get((number, 1), 0)))[0])

    msg_type = fields.get((1, 0), 0)
    height = sfixed64(2)
    round_ = sfixed64(3)
    if msg_type not in _STEP_OF_TYPE or height <= 0 or round_ < 0:
        raise ValueError("not a vote or proposal")
    return msg_type, height, round_


@dataclass
class LedgerApp:
    """The app's behaviour, sans IO: one APDU in, (data, status word) out."""

    key: SigningKey
    button: str = "accept"  # what the operator presses when the device asks: accept | reject
    watermark: tuple[int, int, int] | None = None  # (height, round, step); None until the first approval
    _chunks: list[bytes] = field(default_factory=list)
    apdus: int = 0
    signatures: int = 0

    def process(self, apdu: bytes) -> tuple[bytes, int]:
        self.apdus += 1
        if len(apdu) < 4:
            return b"", SW.WRONG_LENGTH
        cla, ins, p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
        data = apdu[5:] if len(apdu) > 4 else b""
        if len(apdu) > 4 and apdu[4] != len(data):
            return b"", SW.WRONG_LENGTH
        if cla != CLA:
            return b"", SW.CLA_NOT_SUPPORTED
        if ins == INS_GET_VERSION:
            return bytes(APP_VERSION), SW.OK
        if ins == INS_PUBLIC_KEY_ED25519:
            return bytes(self.key.verify_key), SW.OK
        if ins == INS_SIGN_ED25519:
            return self._sign_chunk(p1, p2, data)
        return b"", SW.INS_NOT_SUPPORTED

    def _sign_chunk(self, index: int, count: int, data: bytes) -> tuple[bytes, int]:
        if count == 0 or index == 0 or index > count:
            self._chunks.clear()
            return b"", SW.WRONG_P1P2
        if index == 1:
            self._chunks = []
        elif index != len(self._chunks) + 1:
            self._chunks.clear()
            return b"", SW.WRONG_P1P2
        self._chunks.append(data)
        if sum(len(c) for c in self._chunks) > MAX_MESSAGE:
            self._chunks.clear()
            return b"", SW.WRONG_LENGTH
        if index < count:
            return b"", SW.OK
        message = b"".join(self._chunks)
        self._chunks = []
        try:
            msg_type, height, round_ = parse_sign_bytes(message)
        except ValueError:
            return b"", SW.INVALID_DATA
        hrs = (height, round_, _STEP_OF_TYPE[msg_type])
        if self.watermark is None:
            if self.button != "accept":
                return b"", SW.COMMAND_NOT_ALLOWED
        elif hrs <= self.watermark:
            return b"", SW.CONDITIONS_NOT_SATISFIED
        self.watermark = hrs
        self.signatures += 1
        return self.key.sign(message).signature, SW.OK


class _Handler(socketserver.StreamRequestHandler):
    server: LedgerSimServer
    disable_nagle_algorithm = True

    def handle(self) -> None:
        while True:
            # ledgerblue writes the length and the APDU in two sends; acknowledge at once so its second send is
            # not held back by Nagle waiting for our delayed ACK.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            header = self.rfile.read(4)
            if len(header) < 4:
                return
            (size,) = struct.unpack(">I", header)
            if size > 260:
                return
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            apdu = self.rfile.read(size)
            if len(apdu) < size:
                return
            with self.server.lock:
                data, sw = self.server.app.process(apdu)
            self.wfile.write(struct.pack(">I", len(data)) + data + struct.pack(">H", sw))


class LedgerSimServer(socketserver.ThreadingTCPServer):
    """The simulator's TCP edge; ``start()`` serves from a daemon thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, app: LedgerApp, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((host, port), _Handler)
        self.app = app
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, name="ledger-sim", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> LedgerSimServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def load_or_create_seed(path: Path) -> SigningKey:
    """The device's key: base64 of a 32-byte seed (created 0600 if the file does not exist)."""
    try:
        if not path.exists():
            write_secret_file(path, base64.b64encode(os.urandom(32)))
        seed = base64.b64decode(read_secret_file(path).strip(), validate=True)
    except KeyFileError as exc:  # world-readable or unreadable: the message says how to fix it
        raise SystemExit(f"pykms-ledger-sim: {exc}") from None
    except ValueError:  # not base64: refused below like a seed of the wrong length
        seed = b""
    if len(seed) != 32:
        raise SystemExit(f"{path}: expected base64 of a 32-byte seed")
    return SigningKey(seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pykms-ledger-sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed-file", type=Path, required=True, help="base64 seed; created if missing")
    parser.add_argument("--button", choices=("accept", "reject"), default="accept",
                        help="what the simulated operator presses for the first signature")  # fmt: skip
    args = parser.parse_args(argv)
    app = LedgerApp(load_or_create_seed(args.seed_file), button=args.button)
    server = LedgerSimServer(app, args.host, args.port)
    print(f"ledger app simulator on {args.host}:{server.port}, key {bytes(app.key.verify_key).hex()}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
