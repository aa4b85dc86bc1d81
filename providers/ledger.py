"""Ledger Tendermint validator app (tmkms's ``ledgertm`` provider), through the real ``ledgerblue`` library.

Transports: ``hid`` (a real device, ``ledgerblue.comm.getDongle``) or ``tcp`` (speculos's APDU framing, which
``ledgerblue.commTCP`` speaks: ``pykms-ledger-sim`` or speculos itself).

The app's limits are the operator's to know (README, docs/ledger.md): it signs at most 128 bytes, so long chain
ids and proposals with a full block ID plus a long chain id do not fit, and it cannot sign vote extensions.
pykms refuses an over-long request *before* sending it, and a request the app refuses (its own watermark, the
operator's rejection) raises inside the guard's critical section before the state is saved, so it never advances
pykms's own state.
"""

from __future__ import annotations

import contextlib
import struct
import threading
from typing import Any

from pykms.errors import (
    FatalProviderError,
    InvalidRequest,
    SigningRefused,
    TransientProviderError,
)
from pykms.providers.signer import verify_or_raise

__all__ = [
    "LedgerMessageTooLong",
    "LedgerRefused",
    "LedgerSigner",
    "error_for_status",
]

CLA = 0x56
INS_GET_VERSION = 0x00
INS_PUBLIC_KEY_ED25519 = 0x01
INS_SIGN_ED25519 = 0x02
#: The app's message buffer: longer sign bytes cannot be signed by it.
MAX_MESSAGE = 128


class LedgerRefused(SigningRefused):
    """The app refused to sign: the request is not after its own watermark, or the operator rejected it."""

    code = 2


class LedgerMessageTooLong(InvalidRequest):
    """The sign bytes exceed what the app can hold; refused before anything is sent to the device."""


_WATERMARK = "the Ledger app refused: the request is not after its own height/round/type watermark"
_NOT_INIT = (
    "the Ledger app is not initialised: the first signature was not approved on the device; "
    "run `pykms ledger init -c FILE -H HEIGHT -r ROUND` and approve it"
)
_WRONG_APP = "the open Ledger app is not the Tendermint validator app: open it on the device"
_LOCKED = "the Ledger is locked: unlock it with its PIN"
_STATUS: dict[int, tuple[type[Exception], str]] = {
    0x6985: (LedgerRefused, _WATERMARK),
    0x6986: (FatalProviderError, _NOT_INIT),
    0x6984: (LedgerRefused, "the Ledger app could not parse the sign bytes (invalid data)"),
    0x6700: (LedgerMessageTooLong, "the message is longer than the Ledger app accepts (128 bytes)"),
    0x6B00: (TransientProviderError, "the Ledger app received chunks out of order (wrong P1/P2)"),
    0x6D00: (FatalProviderError, f"{_WRONG_APP} (instruction not supported)"),
    0x6E00: (FatalProviderError, f"{_WRONG_APP} (CLA not supported)"),
    0x6982: (TransientProviderError, _LOCKED),
    0x5515: (TransientProviderError, _LOCKED),
}


def error_for_status(sw: int) -> Exception:
    """The pykms error for a status word, with a message that says what happened and what to do."""
    cls, text = _STATUS.get(sw, (TransientProviderError, "the Ledger answered an unexpected status"))
    return cls(f"{text} (status 0x{sw:04x})")


class LedgerSigner:
    """An Ed25519 key held by the Tendermint validator app on a Ledger."""

    provider = "ledger"
    #: The Tendermint app signs only votes and proposals, never vote-extension sign bytes.
    signs_extensions = False

    def __init__(self, transport: str = "hid", addr: str | None = None, *, extensions_disabled: bool = False) -> None:
        self.transport = transport
        self.addr = addr
        self.extensions_disabled = extensions_disabled
        self._lock = threading.Lock()
        self._dongle: Any = None
        self._pub = self._exchange(INS_PUBLIC_KEY_ED25519, 0, 0, b"")
        if len(self._pub) != 32:
            raise FatalProviderError(f"the Ledger app returned a {len(self._pub)}-byte public key, expected 32")

    @classmethod
    def from_config(cls, cfg: Any) -> LedgerSigner:
        return cls(cfg.transport, cfg.addr, extensions_disabled=cfg.extensions_disabled)

    def _open(self) -> Any:
        try:
            if self.transport == "tcp":
                from ledgerblue.commTCP import getDongle as get_tcp_dongle

                host, _, port = (self.addr or "127.0.0.1:9999").rpartition(":")
                return get_tcp_dongle(server=host or "127.0.0.1", port=int(port))
            from ledgerblue.comm import getDongle

            return getDongle()
        except Exception as exc:  # ledgerblue raises CommException and plain errors alike
            raise TransientProviderError(f"cannot reach the Ledger ({self.transport}): {exc}") from None

    def _exchange(self, ins: int, p1: int, p2: int, data: bytes) -> bytes:
        from ledgerblue.commException import CommException

        apdu = bytes([CLA, ins, p1, p2, len(data)]) + data
        with self._lock:
            if self._dongle is None:
                self._dongle = self._open()
            try:
                return bytes(self._dongle.exchange(apdu))
            except (CommException, OSError, struct.error) as exc:
                sw = int(getattr(exc, "sw", 0) or 0)  # a status word: the app answered, the link is fine
                if sw:
                    raise error_for_status(sw) from None
                self._drop()
                raise TransientProviderError(f"Ledger transport failed: {exc}") from None

    def _drop(self) -> None:
        dongle, self._dongle = self._dongle, None
        if dongle is not None:
            with contextlib.suppress(Exception):
                dongle.close()

    def version(self) -> tuple[int, int, int, int]:
        data = self._exchange(INS_GET_VERSION, 0, 0, b"")
        if len(data) < 4:
            raise FatalProviderError("the Ledger app returned a short version")
        return data[0], data[1], data[2], data[3]

    def public_key(self) -> bytes:
        return self._pub

    def sign(self, message: bytes) -> bytes:
        if not message:
            raise LedgerMessageTooLong("empty message")
        if len(message) > MAX_MESSAGE:
            raise LedgerMessageTooLong(
                f"sign bytes of {len(message)} bytes exceed the Ledger app's {MAX_MESSAGE}-byte limit (a long chain "
                "id, or a proposal with a full block ID): this request cannot be signed with a Ledger"
            )
        # The app takes the message in chunks, P1 = 1-based index and P2 = count; tmkms's ledgertm client cuts
        # them at 250 bytes (USER_MESSAGE_CHUNK_SIZE), so a message within MAX_MESSAGE is always one chunk.
        signature = self._exchange(INS_SIGN_ED25519, 1, 1, message)
        if len(signature) != 64:
            raise TransientProviderError(f"the Ledger returned {len(signature)} bytes instead of a signature")
        verify_or_raise(self._pub, message, signature, self.provider)
        return signature

    def close(self) -> None:
        with self._lock:
            self._drop()
