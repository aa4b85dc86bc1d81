"""SecretConnection over a blocking socket: the signer's production path (kms/runtime.py) and the simulator's.

Theory of operation (PROTOCOL.md §1): both sides send a 35-byte ephemeral X25519 key, sort the two keys into
``lo``/``hi``, derive the DH secret, feed ``lo``, ``hi`` and the secret into a Merlin transcript whose 32-byte
challenge each side signs with its long-term Ed25519 identity, and split an HKDF-SHA256 output into one
ChaCha20-Poly1305 key per direction. From then on every write is cut into 1,024-byte chunks, each sealed in a
1,028-byte frame (LE32 length + data + zero padding) with a 64-bit little-endian counter nonce; every read opens
exactly 1,044 bytes. Any failure poisons the connection: every later call raises FrameError.

The protocol is symmetric, so the same function serves the dialling signer and the listening node side. Cipher
objects are created once per connection, not per frame.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
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

from pykms.errors import FrameError, HandshakeError, PeerIdMismatch
from pykms.proto.tendermint.p2p import conn_pb2

__all__ = ["BlockingSecretStream", "node_id", "secret_connection_sync"]

# Framing constants (cometbft p2p/conn/secret_connection.go: dataLenSize, dataMaxSize, totalFrameSize,
# aeadSizeOverhead).
DATA_LEN_SIZE = 4
DATA_MAX_SIZE = 1024
TOTAL_FRAME_SIZE = DATA_LEN_SIZE + DATA_MAX_SIZE
SEALED_FRAME_SIZE = TOTAL_FRAME_SIZE + 16
MAX_NONCE = 2**64 - 1
# The 35-byte ephemeral-key message: BytesValue{value = 32 bytes}, length-delimited: 22 0a 20 || key.
EPH_PREFIX = b"\x22\x0a\x20"
# AuthSigMessage is at most a few hundred bytes; Go caps the read at 1 MiB, tendermint-rs at exactly 103.
MAX_AUTH_SIG_BYTES = 1024
# Low-order X25519 points refused before DH (tendermint-rs secret_connection.rs, PROTOCOL.md §1.2 step 4).
_P = 2**255 - 19
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
    """(receive key, send key) from the DH secret (VECTORS.md V1)."""
    okm = HKDF(algorithm=hashes.SHA256(), length=96, salt=None, info=HKDF_INFO).derive(dh)
    if loc_is_least:
        return okm[0:32], okm[32:64]
    return okm[32:64], okm[0:32]


def challenge_of(lo: bytes, hi: bytes, dh: bytes) -> bytes:
    """The Merlin transcript challenge both sides sign (PROTOCOL.md §1.3)."""
    transcript = MerlinTranscript(TRANSCRIPT_LABEL)
    transcript.append_message(b"EPHEMERAL_LOWER_PUBLIC_KEY", lo)
    transcript.append_message(b"EPHEMERAL_UPPER_PUBLIC_KEY", hi)
    transcript.append_message(b"DH_SECRET", dh)
    return bytes(transcript.challenge_bytes(b"SECRET_CONNECTION_MAC", 32))


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + counter.to_bytes(8, "little")


class BlockingSecretStream:
    """An established SecretConnection: ``send`` a message, ``recv`` the next plaintext chunk (b"" at EOF)."""

    def __init__(self, sock: socket.socket, send_key: bytes, recv_key: bytes, buffered: bytes = b"") -> None:
        self.sock = sock
        self._send_aead = ChaCha20Poly1305(send_key)
        self._recv_aead = ChaCha20Poly1305(recv_key)
        self._send_nonce = 0
        self._recv_nonce = 0
        self._buf = bytearray(buffered)  # sealed bytes received but not yet opened
        self._plain = b""  # opened data not yet returned (only ever left over from the handshake)
        self._dead: str | None = None
        self.remote_pubkey: bytes = b""
        self.remote_id: str = ""

    def _poison(self, reason: str) -> FrameError:
        self._dead = reason
        return FrameError(reason)

    def _check(self) -> None:
        if self._dead is not None:
            raise FrameError(f"connection unusable after an earlier error: {self._dead}")

    def seal_frames(self, data: bytes) -> bytes:
        """Frames for ``data`` (none for b""), advancing the send nonce."""
        self._check()
        out = []
        view = memoryview(data)
        for start in range(0, len(data), DATA_MAX_SIZE):
            chunk = view[start : start + DATA_MAX_SIZE]
            if self._send_nonce > MAX_NONCE:
                raise self._poison("send nonce exhausted (2^64 frames); the connection must be re-established")
            plain = len(chunk).to_bytes(4, "little") + bytes(chunk) + bytes(DATA_MAX_SIZE - len(chunk))
            out.append(self._send_aead.encrypt(_nonce(self._send_nonce), plain, None))
            self._send_nonce += 1
        return b"".join(out)

    def open_frame(self, sealed: bytes) -> bytes:
        """The data of one 1,044-byte sealed frame, advancing the receive nonce."""
        self._check()
        if len(sealed) != SEALED_FRAME_SIZE:
            raise self._poison(f"sealed frame of {len(sealed)} bytes, expected {SEALED_FRAME_SIZE}")
        if self._recv_nonce > MAX_NONCE:
            raise self._poison("receive nonce exhausted (2^64 frames)")
        try:
            plain = self._recv_aead.decrypt(_nonce(self._recv_nonce), sealed, None)
        except InvalidTag:
            raise self._poison("frame authentication failed (tampered, replayed or reordered frame)") from None
        self._recv_nonce += 1
        length = int.from_bytes(plain[:4], "little")
        if length > DATA_MAX_SIZE:
            raise self._poison(f"frame declares {length} data bytes, more than {DATA_MAX_SIZE}")
        return plain[4 : 4 + length]

    def send(self, data: bytes) -> None:
        """Seal ``data`` and write all its frames at once."""
        frames = self.seal_frames(data)
        try:
            self.sock.sendall(frames)
        except OSError:
            self._dead = "write failed"
            raise

    def recv(self) -> bytes:
        """The data of the next frame; b"" when the peer closed the connection cleanly between frames.

        A socket timeout propagates as TimeoutError with any partial frame kept for the next call.
        """
        self._check()
        if self._plain:
            data, self._plain = self._plain, b""
            return data
        while len(self._buf) < SEALED_FRAME_SIZE:
            chunk = self.sock.recv(65536)
            if not chunk:
                if self._buf:
                    raise self._poison("connection closed in the middle of a frame")
                return b""
            self._buf += chunk
        sealed = bytes(self._buf[:SEALED_FRAME_SIZE])
        del self._buf[:SEALED_FRAME_SIZE]
        data = self.open_frame(sealed)
        if not data:
            return self.recv()  # an empty frame carries nothing; read on
        return data

    def close(self) -> None:
        self._dead = self._dead or "closed"
        with contextlib.suppress(OSError):
            self.sock.close()


def _read_exact(sock: socket.socket, buf: bytearray, n: int, deadline: float) -> bytes:
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HandshakeError("handshake timed out: the peer stalled")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise HandshakeError("handshake timed out: the peer stalled") from None
        except OSError as exc:
            raise HandshakeError(f"handshake failed: {exc.strerror or exc}") from None
        if not chunk:
            raise HandshakeError("the peer closed the connection during the handshake")
        buf += chunk
    out = bytes(buf[:n])
    del buf[:n]
    return out


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


def secret_connection_sync(
    sock: socket.socket,
    identity: SigningKey | bytes,
    *,
    expected_peer_id: str | None = None,
    timeout: float = 5.0,
    ephemeral_secret: bytes | None = None,
) -> BlockingSecretStream:
    """Run the handshake on a connected socket (either role); return the encrypted stream.

    Raises HandshakeError (timeouts, bad keys, a bad challenge signature) or PeerIdMismatch.
    """
    key = identity if isinstance(identity, SigningKey) else SigningKey(identity)
    deadline = time.monotonic() + timeout
    eph = X25519PrivateKey.from_private_bytes(ephemeral_secret if ephemeral_secret is not None else os.urandom(32))
    own = eph.public_key().public_bytes_raw()
    buf = bytearray()
    try:
        sock.settimeout(timeout)
        sock.sendall(EPH_PREFIX + own)
    except OSError as exc:
        raise HandshakeError(f"handshake failed: {exc.strerror or exc}") from None
    message = _read_exact(sock, buf, 35, deadline)
    if message[:3] != EPH_PREFIX:
        raise HandshakeError("malformed ephemeral key message (expected 35 bytes: 22 0a 20 + key)")
    remote = message[3:]
    if remote in LOW_ORDER_POINTS:
        raise HandshakeError("the peer sent a low-order ephemeral key")
    if remote == own:
        raise HandshakeError("the peer echoed our ephemeral key")
    lo, hi = sorted((own, remote))
    try:
        dh = eph.exchange(X25519PublicKey.from_public_bytes(remote))
    except ValueError:
        raise HandshakeError("the DH result is all zero (low-order ephemeral key)") from None
    recv_key, send_key = derive_keys(dh, own == lo)
    challenge = challenge_of(lo, hi, dh)
    stream = BlockingSecretStream(sock, send_key, recv_key, bytes(buf))
    auth = conn_pb2.AuthSigMessage(sig=key.sign(challenge).signature)
    auth.pub_key.ed25519 = bytes(key.verify_key)
    body = auth.SerializeToString()
    try:
        stream.send(bytes([len(body)]) + body)
    except OSError as exc:
        raise HandshakeError(f"handshake failed: {exc.strerror or exc}") from None
    # Read the peer's delimited AuthSigMessage from the decrypted stream.
    plain = bytearray()
    need = None
    while need is None or len(plain) < need:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HandshakeError("handshake timed out: the peer stalled")
        sock.settimeout(remaining)
        try:
            data = stream.recv()
        except TimeoutError:
            raise HandshakeError("handshake timed out: the peer stalled") from None
        except FrameError as exc:
            raise HandshakeError(f"handshake failed: {exc}") from None
        except OSError as exc:
            raise HandshakeError(f"handshake failed: {exc.strerror or exc}") from None
        if not data:
            raise HandshakeError("the peer closed the connection during the handshake")
        plain += data
        if need is None:
            length, used = _uvarint(bytes(plain[:10]))
            if length is not None:
                if length > MAX_AUTH_SIG_BYTES:
                    raise HandshakeError(f"AuthSigMessage of {length} bytes is too large")
                need = used + length
    _length, used = _uvarint(bytes(plain[:10]))
    remote_pub, sig = _parse_auth_sig(bytes(plain[used:need]))
    try:
        VerifyKey(remote_pub).verify(challenge, sig)
    except (BadSignatureError, ValueError):
        raise HandshakeError("challenge verification failed: the peer's signature is invalid") from None
    stream._plain = bytes(plain[need:])
    stream.remote_pubkey = remote_pub
    stream.remote_id = node_id(remote_pub)
    if expected_peer_id is not None and not compare_digest(stream.remote_id, expected_peer_id.lower()):
        raise PeerIdMismatch(f"peer ID {stream.remote_id} is not the pinned {expected_peer_id.lower()}")
    return stream


def _uvarint(data: bytes) -> tuple[int | None, int]:
    """(value, bytes used), or (None, 0) when more bytes are needed."""
    value = 0
    for i, byte in enumerate(data):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
        if i >= 9:
            raise HandshakeError("malformed AuthSigMessage length")
    return None, 0
