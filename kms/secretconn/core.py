"""SecretConnection, sans-IO: the handshake and the frame layer as pure state machines (bytes in, bytes out).

Theory of operation (docs/protocol.md §1, cometbft p2p/conn/secret_connection.go): both sides send a 35-byte
ephemeral X25519 key, sort the two keys into ``lo``/``hi``, compute the DH secret (refusing low-order keys and
an all-zero result), feed ``lo``, ``hi`` and the secret into a Merlin transcript whose 32-byte challenge each side
signs with its long-term Ed25519 identity, and split HKDF-SHA256(dh) into one ChaCha20-Poly1305 key per direction.
From then on a write is cut into 1,024-byte chunks, each sealed in a 1,028-byte frame (LE32 length + data + zero
padding) under a 64-bit little-endian counter nonce; a read opens exactly 1,044 bytes. Frames carry a byte stream,
not messages. Any failure poisons the object: every later call raises.

Nothing here touches a socket or a clock: the adapter (``pykms.secretconn.sync``, over blocking sockets) moves
the bytes and enforces the timeouts. The ephemeral secret is injectable
so tests reproduce test vector D1 byte for byte. The protocol is symmetric: the same object serves both roles.
"""

from __future__ import annotations

import enum
import os
import struct
from hashlib import sha256
from hmac import compare_digest

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import DecodeError as ProtobufDecodeError
from merlin_transcripts.merlin_transcript import MerlinTranscript
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from pykms.errors import DecodeError, FrameError, HandshakeError, PeerIdMismatch
from pykms.privval.varint import decode_uvarint
from pykms.proto.tendermint.p2p import conn_pb2

__all__ = [
    "DATA_MAX_SIZE",
    "LOW_ORDER_POINTS",
    "SEALED_FRAME_SIZE",
    "FrameCodec",
    "Handshake",
    "challenge_of",
    "check_peer_id",
    "derive_keys",
    "node_id",
]

# Framing (cometbft secret_connection.go: dataLenSize 4, dataMaxSize 1024, totalFrameSize 1028, aeadSizeOverhead 16).
DATA_LEN_SIZE = 4
DATA_MAX_SIZE = 1024
TOTAL_FRAME_SIZE = DATA_LEN_SIZE + DATA_MAX_SIZE
SEALED_FRAME_SIZE = TOTAL_FRAME_SIZE + 16
#: Go's incrNonce panics ("can't increase nonce without overflow") when incrementing this counter, right after
#: sealing with it and before the write, so no frame under it ever travels; tendermint-rs refuses it too. We
#: refuse to seal or open under it: the nonce never wraps and never repeats.
MAX_NONCE = 2**64 - 1
#: 12-byte ChaCha20-Poly1305 nonce: 4 zero bytes then the 64-bit counter, little-endian (test vector V2).
_NONCE = struct.Struct("<4xQ")
_ZEROS = bytes(DATA_MAX_SIZE)
#: The ephemeral-key message: google.protobuf.BytesValue{1: 32 bytes}, length-delimited = 22 0a 20 || key.
EPH_PREFIX = b"\x22\x0a\x20"
EPH_MESSAGE_SIZE = 35
#: An AuthSigMessage is 103 bytes with an Ed25519 key; Go caps the read at 1 MiB, tendermint-rs reads exactly
#: 103. We allow room for other key types only so that we can name them in the error.
MAX_AUTH_SIG_BYTES = 1024
_P = 2**255 - 19
#: Low-order X25519 u-coordinates refused before DH (tendermint-rs secret_connection.rs; docs/protocol.md §1.2 step 4).
LOW_ORDER_POINTS = frozenset(
    {
        bytes(32),
        (1).to_bytes(32, "little"),
        bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
        (_P - 1).to_bytes(32, "little"),
        _P.to_bytes(32, "little"),
        (_P + 1).to_bytes(32, "little"),
    }
)
TRANSCRIPT_LABEL = b"TENDERMINT_SECRET_CONNECTION_TRANSCRIPT_HASH"
HKDF_INFO = b"TENDERMINT_SECRET_CONNECTION_KEY_AND_CHALLENGE_GEN"


def node_id(pub: bytes) -> str:
    """CometBFT node ID: hex of the first 20 bytes of SHA-256 of the raw Ed25519 key (p2p/key.go PubKeyToID)."""
    return sha256(pub).digest()[:20].hex()


def derive_keys(dh: bytes, loc_is_least: bool) -> tuple[bytes, bytes]:
    """(receive key, send key) from the DH secret (tests/vectors/README.md V1: okm[0:32] carries hi -> lo traffic)."""
    okm = HKDF(algorithm=hashes.SHA256(), length=96, salt=None, info=HKDF_INFO).derive(dh)
    if loc_is_least:
        return okm[0:32], okm[32:64]
    return okm[32:64], okm[0:32]


def challenge_of(lo: bytes, hi: bytes, dh: bytes) -> bytes:
    """The Merlin transcript challenge both sides sign (docs/protocol.md §1.3). The hash-pinned
    ``merlin-transcripts`` package reproduces the gtank/merlin and curve25519-voi vectors (test vector V4)."""
    transcript = MerlinTranscript(TRANSCRIPT_LABEL)
    transcript.append_message(b"EPHEMERAL_LOWER_PUBLIC_KEY", lo)
    transcript.append_message(b"EPHEMERAL_UPPER_PUBLIC_KEY", hi)
    transcript.append_message(b"DH_SECRET", dh)
    return bytes(transcript.challenge_bytes(b"SECRET_CONNECTION_MAC", 32))


def check_peer_id(expected: str, actual: str) -> None:
    """Raise PeerIdMismatch unless the node IDs are equal (case-insensitive), compared in constant time as tmkms
    does (src/connection/tcp.rs)."""
    want = expected.strip().lower().encode("utf-8", "replace")
    got = actual.strip().lower().encode("utf-8", "replace")
    if not compare_digest(want, got):
        raise PeerIdMismatch(f"peer ID {actual.lower()} is not the pinned {expected.strip().lower()}")


class FrameCodec:
    """The frame layer of an established connection, one object per connection (ciphers made once)."""

    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send = ChaCha20Poly1305(send_key)
        self._recv = ChaCha20Poly1305(recv_key)
        self.send_nonce = 0
        self.recv_nonce = 0
        self._pending = bytearray()
        self._dead: str | None = None

    def _fail(self, reason: str) -> FrameError:
        self._dead = reason
        return FrameError(reason)

    def check(self) -> None:
        """Raise FrameError if an earlier failure poisoned the connection (adapters call it before any I/O)."""
        if self._dead is not None:
            raise FrameError(f"connection unusable after an earlier error: {self._dead}")

    def seal(self, data: bytes) -> bytes:
        """All the sealed frames for ``data`` (none for b""), advancing the send nonce once per frame."""
        self.check()
        size = len(data)
        if 0 < size <= DATA_MAX_SIZE:  # the common case (every privval request and reply): one frame
            return self._seal_one(data)
        view = memoryview(data)
        return b"".join([self._seal_one(view[i : i + DATA_MAX_SIZE]) for i in range(0, size, DATA_MAX_SIZE)])

    def _seal_one(self, chunk: bytes | memoryview) -> bytes:
        counter = self.send_nonce
        if counter >= MAX_NONCE:
            raise self._fail("send nonce exhausted (2^64-1 frames); the connection must be re-established")
        n = len(chunk)
        plain = n.to_bytes(DATA_LEN_SIZE, "little") + bytes(chunk) + _ZEROS[n:]
        sealed = self._send.encrypt(_NONCE.pack(counter), plain, None)
        self.send_nonce = counter + 1
        return sealed

    def open(self, sealed: bytes) -> bytes:
        """The data of exactly one sealed frame, advancing the receive nonce."""
        self.check()
        if len(sealed) != SEALED_FRAME_SIZE:
            raise self._fail(f"sealed frame of {len(sealed)} bytes, expected {SEALED_FRAME_SIZE}")
        return self._open_one(sealed)

    def _open_one(self, sealed: bytes | memoryview) -> bytes:
        counter = self.recv_nonce
        if counter >= MAX_NONCE:
            raise self._fail("receive nonce exhausted (2^64-1 frames); the connection must be re-established")
        try:
            plain = self._recv.decrypt(_NONCE.pack(counter), sealed, None)
        except InvalidTag:
            raise self._fail("frame authentication failed (tampered, replayed or reordered frame)") from None
        length = int.from_bytes(plain[:DATA_LEN_SIZE], "little")
        if length > DATA_MAX_SIZE:
            raise self._fail(f"frame declares {length} data bytes, more than {DATA_MAX_SIZE}")
        self.recv_nonce = counter + 1
        return plain[DATA_LEN_SIZE : DATA_LEN_SIZE + length]

    def feed(self, data: bytes) -> bytes:
        """Buffer received bytes; return the data of every frame completed (b"" if none yet)."""
        self.check()
        pending = self._pending
        if not pending and len(data) == SEALED_FRAME_SIZE:  # one whole frame per read: no buffering at all
            return self._open_one(data)
        pending += data
        if len(pending) < SEALED_FRAME_SIZE:
            return b""
        end = len(pending) - len(pending) % SEALED_FRAME_SIZE
        out: list[bytes] = []
        with memoryview(pending) as view:
            for i in range(0, end, SEALED_FRAME_SIZE):
                try:
                    out.append(self._open_one(view[i : i + SEALED_FRAME_SIZE]))
                except FrameError:
                    if not out:
                        raise
                    # Deliver what authenticated before the bad frame; the codec is poisoned, so the next
                    # call raises with the reason.
                    break
        del pending[:end]
        return out[0] if len(out) == 1 else b"".join(out)

    def eof(self) -> None:
        """The peer closed: fine between frames, FrameError (and poisoned) in the middle of one."""
        self.check()
        if self._pending:
            raise self._fail(f"connection closed {len(self._pending)} bytes into a frame")

    def __repr__(self) -> str:
        state = f"poisoned: {self._dead}" if self._dead else "open"
        return f"FrameCodec(sent={self.send_nonce}, received={self.recv_nonce}, {state})"

    @property
    def mid_frame(self) -> bool:
        """True when part of a frame has been received (a clean EOF must not fall here)."""
        return bool(self._pending)

    def poison(self, reason: str) -> None:
        self._dead = self._dead or reason


class _State(enum.Enum):
    WAIT_EPHEMERAL = "waiting for the peer's ephemeral key"
    WAIT_AUTH = "waiting for the peer's authentication"
    DONE = "established"
    FAILED = "failed"


class Handshake:
    """The handshake of one side. Feed it received bytes; send what ``data_to_send`` returns; when ``done``,
    ``codec`` carries the connection and ``leftover`` any data the peer sent after its AuthSigMessage."""

    def __init__(
        self,
        identity: SigningKey | bytes,
        *,
        ephemeral_secret: bytes | None = None,
        expected_peer_id: str | None = None,
    ) -> None:
        self._identity = identity if isinstance(identity, SigningKey) else SigningKey(bytes(identity))
        self._eph = X25519PrivateKey.from_private_bytes(
            ephemeral_secret if ephemeral_secret is not None else os.urandom(32)
        )
        self.own_ephemeral = self._eph.public_key().public_bytes_raw()
        self._expected = expected_peer_id
        self._outgoing = bytearray(EPH_PREFIX + self.own_ephemeral)
        self._incoming = bytearray()
        self._plain = bytearray()
        self._state = _State.WAIT_EPHEMERAL
        self._challenge = b""
        self.codec: FrameCodec | None = None
        self.remote_pubkey = b""
        self.remote_id = ""
        self.leftover = b""

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def state(self) -> str:
        return self._state.value

    def data_to_send(self) -> bytes:
        out, self._outgoing = bytes(self._outgoing), bytearray()
        return out

    def receive_data(self, data: bytes) -> None:
        """Advance with bytes from the peer. Raises HandshakeError / PeerIdMismatch; the object is then dead."""
        if self._state is _State.FAILED:
            raise HandshakeError("handshake already failed")
        if self._state is _State.DONE:
            raise HandshakeError("handshake already complete: give further bytes to the codec")
        try:
            self._incoming += data
            if self._state is _State.WAIT_EPHEMERAL and len(self._incoming) >= EPH_MESSAGE_SIZE:
                self._on_ephemeral(bytes(self._incoming[:EPH_MESSAGE_SIZE]))
                del self._incoming[:EPH_MESSAGE_SIZE]
            if self._state is _State.WAIT_AUTH and self._incoming:
                self._on_auth_bytes()
        except HandshakeError:
            self._state = _State.FAILED
            raise

    def _on_ephemeral(self, message: bytes) -> None:
        if message[:3] != EPH_PREFIX:
            raise HandshakeError("malformed ephemeral key message (expected 35 bytes: 22 0a 20 + key)")
        remote = message[3:]
        if remote in LOW_ORDER_POINTS:
            raise HandshakeError("the peer sent a low-order ephemeral key")
        if remote == self.own_ephemeral:
            raise HandshakeError("the peer echoed our ephemeral key")
        lo, hi = (self.own_ephemeral, remote) if self.own_ephemeral < remote else (remote, self.own_ephemeral)
        try:
            dh = self._eph.exchange(X25519PublicKey.from_public_bytes(remote))
        except ValueError:
            raise HandshakeError("the DH result is all zero (low-order ephemeral key)") from None
        recv_key, send_key = derive_keys(dh, self.own_ephemeral == lo)
        self._challenge = challenge_of(lo, hi, dh)
        self.codec = FrameCodec(send_key, recv_key)
        auth = conn_pb2.AuthSigMessage(sig=self._identity.sign(self._challenge).signature)
        auth.pub_key.ed25519 = bytes(self._identity.verify_key)
        body = auth.SerializeToString()
        self._outgoing += self.codec.seal(bytes([len(body)]) + body)  # 102 < 128: one varint byte
        self._state = _State.WAIT_AUTH

    def _on_auth_bytes(self) -> None:
        assert self.codec is not None
        try:
            self._plain += self.codec.feed(bytes(self._incoming))
        except FrameError as exc:
            raise HandshakeError(f"handshake failed: {exc}") from None
        self._incoming.clear()
        try:
            head = decode_uvarint(self._plain)
        except DecodeError:
            raise HandshakeError("malformed AuthSigMessage length") from None
        if head is None:
            return
        length, used = head
        if length > MAX_AUTH_SIG_BYTES:
            raise HandshakeError(f"AuthSigMessage of {length} bytes is too large")
        if len(self._plain) < used + length:
            return
        remote_pub, sig = _parse_auth_sig(bytes(self._plain[used : used + length]))
        try:
            VerifyKey(remote_pub).verify(self._challenge, sig)
        except (BadSignatureError, ValueError):
            raise HandshakeError("challenge verification failed: the peer's signature is invalid") from None
        self.remote_pubkey = remote_pub
        self.remote_id = node_id(remote_pub)
        if self._expected is not None:
            check_peer_id(self._expected, self.remote_id)
        self.leftover = bytes(self._plain[used + length :])
        self._state = _State.DONE


def _parse_auth_sig(body: bytes) -> tuple[bytes, bytes]:
    msg = conn_pb2.AuthSigMessage()
    try:
        msg.ParseFromString(body)
    except (ProtobufDecodeError, ValueError, RuntimeError) as exc:
        raise HandshakeError(f"malformed AuthSigMessage: {exc}") from None
    case = msg.pub_key.WhichOneof("sum")
    if case != "ed25519":
        raise HandshakeError(f"expected ed25519 pubkey, got {case or 'none'}")
    pub = bytes(msg.pub_key.ed25519)
    if len(pub) != 32:
        raise HandshakeError(f"ed25519 pubkey of {len(pub)} bytes")
    return pub, bytes(msg.sig)
