"""The runtime's validator sockets (issue 8): blocking, with the kernel's SO_RCVTIMEO/SO_SNDTIMEO in place of
CPython's poll-before-every-call timeouts; an expired wait still surfaces as TimeoutError, which the session turns
into "the link is considered dead". Real sockets, a real SecretConnection handshake."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from nacl.signing import SigningKey

from pykms.secretconn.sync import (
    BlockingPlainStream,
    BlockingSecretStream,
    secret_connection_sync,
    set_kernel_timeouts,
)


def test_plain_stream_times_out_and_still_carries_data() -> None:
    a, b = socket.socketpair()
    with a, b:
        set_kernel_timeouts(b, 0.2)
        assert b.gettimeout() is None  # no Python-level timeout: one recv syscall per read
        stream = BlockingPlainStream(b)
        a.sendall(b"ping")
        assert stream.recv() == b"ping"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            stream.recv()
        assert 0.15 <= time.monotonic() - started < 2.0
        a.sendall(b"after")  # the stream is still usable after a timeout
        assert stream.recv() == b"after"


def test_secret_stream_times_out_after_the_handshake() -> None:
    a, b = socket.socketpair()
    result: list[BlockingSecretStream] = []
    peer = threading.Thread(target=lambda: result.append(secret_connection_sync(a, SigningKey.generate(), timeout=5)))
    peer.start()
    ours = secret_connection_sync(b, SigningKey.generate(), timeout=5)
    peer.join()
    theirs = result[0]
    try:
        set_kernel_timeouts(b, 0.2)
        theirs.send(b"request")
        assert ours.recv() == b"request"
        with pytest.raises(TimeoutError):
            ours.recv()
        theirs.send(b"next")  # a timeout between frames loses nothing
        assert ours.recv() == b"next"
        ours.send(b"reply")
        assert theirs.recv() == b"reply"
    finally:
        ours.close()
        theirs.close()
