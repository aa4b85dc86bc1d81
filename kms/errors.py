"""The one exception tree of pykms.

Every error pykms raises on purpose is a ``KmsError``; foreign exceptions (OSError, protobuf's DecodeError,
cryptography's InvalidTag, ...) are mapped to one of these at the edge that meets them, so callers catch
exactly one family and the CLI maps it to an exit code in one place::

    KmsError
    ├── ConfigError                 bad or missing configuration (names the file, the key and the fix)
    ├── KeyFileError                unreadable, malformed or too-open key/identity file
    ├── ProtocolError               anything a peer sent that we refuse; closes that connection only
    │   ├── HandshakeError          SecretConnection handshake refused (low-order key, bad challenge, ...)
    │   │   └── PeerIdMismatch      the peer's node ID is not the pinned one
    │   ├── FrameError              AEAD failure, oversize frame, nonce exhaustion: the connection is poisoned
    │   ├── ConnectionLost          the link failed (reset, broken pipe) under a blocking stream
    │   │   └── LinkTimeout         nothing read, or a write not taken, within the link's deadline
    │   └── DecodeError             bad varint, oversize message, garbage protobuf, unknown oneof case
    ├── SigningRefused              the request is valid but must not be signed (answered RemoteSignerError)
    │   ├── ChainIdMismatch
    │   ├── HeightAboveMax
    │   ├── InvalidRequest          e.g. a BlockID hash of a length other than 0 or 32, an unexpected extension
    │   └── DoubleSignError         guard refusal
    │       ├── RegressionError     height, round or step below the last signed one
    │       └── ConflictError       same HRS, different payload (or tmkms cross-step conflict)
    ├── StateError                  the double-sign state cannot be trusted; the chain stops (fail closed)
    │   ├── StateMissing
    │   ├── StateCorrupt
    │   ├── StateLocked             another pykms holds this state
    │   └── PersistError            the state could not be made durable; nothing is signed
    ├── ProviderError               a signing backend failed
    │   ├── TransientProviderError  worth a retry (device busy, connector gone, session expired)
    │   └── FatalProviderError      will not get better by retrying (wrong password, absent key)
    ├── HarnessError                conformance-harness failure carrying its exit code
    └── ThresholdError              a FROST value refused: invalid element or scalar, a share that does not
                                    verify, too few participants, a nonce already used
"""

from __future__ import annotations

__all__ = [
    "ChainIdMismatch",
    "ConfigError",
    "ConflictError",
    "ConnectionLost",
    "DecodeError",
    "DoubleSignError",
    "FatalProviderError",
    "FrameError",
    "HandshakeError",
    "HarnessError",
    "HeightAboveMax",
    "InvalidRequest",
    "KeyFileError",
    "KmsError",
    "LinkTimeout",
    "PeerIdMismatch",
    "PersistError",
    "ProtocolError",
    "ProviderError",
    "RegressionError",
    "SigningRefused",
    "StateCorrupt",
    "StateError",
    "StateLocked",
    "StateMissing",
    "ThresholdError",
    "TransientProviderError",
]


class KmsError(Exception):
    """Base of every error pykms raises on purpose."""


class ConfigError(KmsError):
    """Configuration refused; the message names the file, the key and the fix."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None, fix: str | None = None):
        self.file = file
        self.key = key
        self.fix = fix
        text = message
        if key:
            text = f"key `{key}`: {text}"
        if file:
            text = f"{file}: {text}"
        if fix:
            text = f"{text} (fix: {fix})"
        super().__init__(text)


class KeyFileError(KmsError):
    """A key or identity file is missing, malformed or readable by others. Never carries key bytes."""


class ProtocolError(KmsError):
    """A peer sent something we refuse. Closes that one connection; nothing else is affected."""


class HandshakeError(ProtocolError):
    """SecretConnection handshake refused."""


class PeerIdMismatch(HandshakeError):
    """The peer's node ID does not equal the pinned `ID@host` one."""


class FrameError(ProtocolError):
    """A sealed frame failed to open, declared a bad length, or the nonce would wrap. Poisons the link."""


class ConnectionLost(ProtocolError):
    """The transport failed (reset, broken pipe, any socket error); the connection is gone."""


class LinkTimeout(ConnectionLost):
    """The peer sent nothing, or did not take a write, within the link's deadline."""


class DecodeError(ProtocolError):
    """A privval message could not be decoded (varint, size cap, protobuf, unknown case)."""


class SigningRefused(KmsError):
    """A well-formed request that must not be signed. Answered with RemoteSignerError, link kept."""

    #: RemoteSignerError code sent to the node (tmkms uses 2 for double signs; CometBFT's signer uses 0).
    code: int = 0


class ChainIdMismatch(SigningRefused):
    """The request names a chain this validator connection does not serve."""


class HeightAboveMax(SigningRefused):
    """The request's height is above the configured max_height."""


class InvalidRequest(SigningRefused):
    """The request is structurally invalid for signing (e.g. a 31-byte block hash)."""


class DoubleSignError(SigningRefused):
    """The double-sign guard refused the request."""

    code = 2


class RegressionError(DoubleSignError):
    """Height, round or step below the last signed one."""


class ConflictError(DoubleSignError):
    """Same height/round/step as the last signature but a different payload."""


class StateError(KmsError):
    """The persisted double-sign state cannot be trusted or written; that chain stops signing."""


class StateMissing(StateError):
    """No state file where one is required."""


class StateCorrupt(StateError):
    """The state file exists but cannot be parsed or fails its checksum."""


class StateLocked(StateError):
    """Another process holds this state."""


class PersistError(StateError):
    """The new state could not be made durable; the signature is withheld."""


class ProviderError(KmsError):
    """A signing backend failed."""


class TransientProviderError(ProviderError):
    """Worth retrying: device busy, connector unreachable, session expired."""


class FatalProviderError(ProviderError):
    """Will not get better by retrying: wrong credentials, absent key, missing capability."""


class HarnessError(KmsError):
    """A conformance-harness failure with tm-signer-harness's exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class ThresholdError(KmsError):
    """A FROST threshold-signing value or step was refused (never carries a share or a nonce)."""
