"""FROST(Ed25519, SHA-512) of RFC 9591, on libsodium's group operations as PyNaCl exposes them. Pure; no I/O.

Theory of operation
-------------------
A trusted dealer (``split_secret``) Shamir-splits the validator's existing secret scalar (SHA-512 of the seed,
clamped, RFC 8032 §5.1.5) into ``n`` shares with threshold ``t``; the group public key is the validator's
ordinary Ed25519 public key, so the chain sees no change. Signing takes two rounds (RFC 9591 §5):

1. every chosen participant draws a pair of nonces and publishes their commitments (``commit``);
2. given the message and the list of commitments, each participant answers a signature share (``sign_share``).

The coordinator checks each share (``verify_share``) and sums them (``aggregate``) into (R, z): a plain Ed25519
signature, because the challenge H2 is SHA-512(R ‖ A ‖ M) without a context string (RFC 9591 §6.5).

Every curve and scalar operation is a libsodium call (``nacl.bindings.crypto_core_ed25519_*``,
``crypto_scalarmult_ed25519_*_noclamp``); nothing here does curve arithmetic by hand. Randomness is a parameter
(``rng``), so the RFC's vectors replay exactly. A nonce pair must be used for one message only, ever: this module
cannot enforce that (it keeps no state); the cosigner does, durably.

Encodings (RFC 9591 §6.5): scalars 32 bytes little-endian, canonical (< L); elements the 32-byte Ed25519
encoding, refused unless valid, not of small order and in the prime-order subgroup; identifiers 1..n encoded as
scalars.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from nacl import bindings
from nacl.exceptions import BadSignatureError
from nacl.exceptions import RuntimeError as NaclRuntimeError
from nacl.signing import VerifyKey

from pykms.errors import ThresholdError

__all__ = [
    "Commitment",
    "Nonces",
    "PublicKeyPackage",
    "SecretShare",
    "aggregate",
    "check_element",
    "check_scalar",
    "commit",
    "crypto_public",
    "public_key_package",
    "secret_scalar_from_seed",
    "sign_share_and_commitment",
    "split_secret",
]

#: RFC 9591 §6.5 contextString of FROST(Ed25519, SHA-512).
CONTEXT_STRING = b"FROST-ED25519-SHA512-v1"
#: Group order of edwards25519 (RFC 8032 §5.1), for the canonical-scalar check.
ORDER_L = 2**252 + 27742317777372353535851937790883648493
SCALAR_LEN = 32
ELEMENT_LEN = 32

Rng = Callable[[int], bytes]

_reduce = bindings.crypto_core_ed25519_scalar_reduce
_add = bindings.crypto_core_ed25519_scalar_add
_sub = bindings.crypto_core_ed25519_scalar_sub
_mul = bindings.crypto_core_ed25519_scalar_mul
_point_add = bindings.crypto_core_ed25519_add
_ZERO = bytes(SCALAR_LEN)
_ONE = (1).to_bytes(SCALAR_LEN, "little")


# ---------------------------------------------------------------------------------------------------------------
# Primitives (RFC 9591 §6.5)


def _h(*parts: bytes) -> bytes:
    return hashlib.sha512(b"".join(parts)).digest()


def h1(m: bytes) -> bytes:
    return _reduce(_h(CONTEXT_STRING, b"rho", m))


def h2(m: bytes) -> bytes:
    """The Ed25519 challenge hash: no context string, so the result verifies as RFC 8032 Ed25519."""
    return _reduce(_h(m))


def h3(m: bytes) -> bytes:
    return _reduce(_h(CONTEXT_STRING, b"nonce", m))


def h4(m: bytes) -> bytes:
    return _h(CONTEXT_STRING, b"msg", m)


def h5(m: bytes) -> bytes:
    return _h(CONTEXT_STRING, b"com", m)


def scalar_from_int(value: int) -> bytes:
    return (value % ORDER_L).to_bytes(SCALAR_LEN, "little")


def check_scalar(data: bytes, what: str) -> bytes:
    """DeserializeScalar: 32 bytes, canonical."""
    if len(data) != SCALAR_LEN or int.from_bytes(data, "little") >= ORDER_L:
        raise ThresholdError(f"{what} is not a canonical scalar")
    return bytes(data)


def check_element(data: bytes, what: str) -> bytes:
    """DeserializeElement: a valid point of the prime-order subgroup, not the identity (nor of small order)."""
    if len(data) != ELEMENT_LEN or not bindings.crypto_core_ed25519_is_valid_point(bytes(data)):
        raise ThresholdError(f"{what} is not a valid Ed25519 group element")
    return bytes(data)


def _base_mul(scalar: bytes) -> bytes:
    try:
        return bindings.crypto_scalarmult_ed25519_base_noclamp(scalar)
    except NaclRuntimeError:
        raise ThresholdError("scalar multiplication gave the identity (zero scalar)") from None


def _point_mul(scalar: bytes, point: bytes) -> bytes:
    try:
        return bindings.crypto_scalarmult_ed25519_noclamp(scalar, point)
    except NaclRuntimeError:
        raise ThresholdError("scalar multiplication gave the identity (zero scalar)") from None


def secret_scalar_from_seed(seed: bytes) -> bytes:
    """The Ed25519 secret scalar of a 32-byte seed: SHA-512, first half clamped (RFC 8032 §5.1.5), mod L."""
    if len(seed) != 32:
        raise ThresholdError(f"an Ed25519 seed is 32 bytes, found {len(seed)}")
    digest = bytearray(hashlib.sha512(seed).digest()[:32])
    digest[0] &= 248
    digest[31] &= 127
    digest[31] |= 64
    return _reduce(bytes(digest) + bytes(32))


# ---------------------------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class SecretShare:
    """One participant's signing share (identifier i, scalar f(i)); the scalar never appears in a repr."""

    identifier: int
    scalar: bytes = field(repr=False)

    @property
    def verifying_share(self) -> bytes:
        return _base_mul(self.scalar)


@dataclass(frozen=True)
class PublicKeyPackage:
    """What every coordinator knows: t, the group key and each participant's verifying share."""

    min_signers: int
    group_public_key: bytes
    verifying_shares: Mapping[int, bytes]


@dataclass(frozen=True)
class Nonces:
    """A participant's secret nonce pair for one signing session; used once, then destroyed."""

    hiding: bytes = field(repr=False)
    binding: bytes = field(repr=False)
    #: (G·hiding, G·binding), kept from ``commit`` so round two need not recompute them.
    public: tuple[bytes, bytes]


@dataclass(frozen=True, order=True)
class Commitment:
    """The public half of a nonce pair, as published in round one."""

    identifier: int
    hiding: bytes
    binding: bytes

    def checked(self) -> Commitment:
        check_element(self.hiding, f"participant {self.identifier}'s hiding commitment")
        check_element(self.binding, f"participant {self.identifier}'s binding commitment")
        return self


# ---------------------------------------------------------------------------------------------------------------
# Key generation (RFC 9591 Appendix C, trusted dealer)


def split_secret(secret: bytes, min_signers: int, max_signers: int, *, rng: Rng = os.urandom) -> list[SecretShare]:
    """Shamir shares f(1..n) of ``secret`` with a random polynomial of degree t-1 and constant term ``secret``."""
    if not 2 <= min_signers <= max_signers:
        raise ThresholdError(f"need 2 <= t <= n, got t={min_signers}, n={max_signers}")
    if max_signers >= 2**16:
        raise ThresholdError("too many participants")
    check_scalar(secret, "the secret")
    coefficients = [_reduce(rng(64)) for _ in range(min_signers - 1)]
    return split_with_coefficients(secret, coefficients, max_signers)


def split_with_coefficients(secret: bytes, coefficients: Sequence[bytes], max_signers: int) -> list[SecretShare]:
    """The same split with given higher coefficients (the RFC's vector gives them)."""
    coeffs = [secret, *coefficients]
    return [SecretShare(i, _evaluate(coeffs, scalar_from_int(i))) for i in range(1, max_signers + 1)]


def _evaluate(coefficients: Sequence[bytes], x: bytes) -> bytes:
    """Horner's rule over the scalar field."""
    value = _ZERO
    for coefficient in reversed(coefficients):
        value = _add(_mul(value, x), coefficient)
    return value


def public_key_package(shares: Sequence[SecretShare], min_signers: int, group_public_key: bytes) -> PublicKeyPackage:
    return PublicKeyPackage(
        min_signers=min_signers,
        group_public_key=group_public_key,
        verifying_shares={share.identifier: share.verifying_share for share in shares},
    )


# ---------------------------------------------------------------------------------------------------------------
# Round one (RFC 9591 §4.1, §5.1)


def nonce_generate(secret: bytes, random_bytes: bytes) -> bytes:
    """H3(random_bytes ‖ SerializeScalar(secret)): hedged against a weak RNG by the secret share."""
    return h3(random_bytes + secret)


def commit(share: SecretShare, *, rng: Rng = os.urandom) -> tuple[Nonces, Commitment]:
    hiding = nonce_generate(share.scalar, rng(32))
    binding = nonce_generate(share.scalar, rng(32))
    commitment = Commitment(share.identifier, _base_mul(hiding), _base_mul(binding))
    return Nonces(hiding, binding, (commitment.hiding, commitment.binding)), commitment


# ---------------------------------------------------------------------------------------------------------------
# Shared computations (RFC 9591 §4.2-§4.6)


def _sorted_checked(commitments: Sequence[Commitment], *, known: Commitment | None = None) -> list[Commitment]:
    """Sorted by identifier, each point validated; ``known`` (our own, computed here) needs no validation."""
    ordered = sorted(commitments, key=lambda c: c.identifier)
    ids = [c.identifier for c in ordered]
    if len(set(ids)) != len(ids) or any(i < 1 or i >= ORDER_L for i in ids):
        raise ThresholdError("the commitment list names a participant twice or a zero identifier")
    return [c if c == known else c.checked() for c in ordered]


def encode_commitment_list(commitments: Sequence[Commitment]) -> bytes:
    return b"".join(scalar_from_int(c.identifier) + c.hiding + c.binding for c in commitments)


def binding_factors(group_public_key: bytes, commitments: Sequence[Commitment], message: bytes) -> dict[int, bytes]:
    return _binding_factors(group_public_key, _sorted_checked(commitments), message)


def _binding_factors(group_public_key: bytes, ordered: Sequence[Commitment], message: bytes) -> dict[int, bytes]:
    """For a list already sorted and checked (each point validation costs a scalar multiplication)."""
    prefix = group_public_key + h4(message) + h5(encode_commitment_list(ordered))
    return {c.identifier: h1(prefix + scalar_from_int(c.identifier)) for c in ordered}


def group_commitment(commitments: Sequence[Commitment], factors: Mapping[int, bytes]) -> bytes:
    return _group_commitment(_sorted_checked(commitments), factors)


def _group_commitment(ordered: Sequence[Commitment], factors: Mapping[int, bytes]) -> bytes:
    total: bytes | None = None
    for c in ordered:
        term = _point_add(c.hiding, _point_mul(factors[c.identifier], c.binding))
        total = term if total is None else _point_add(total, term)
    if total is None:
        raise ThresholdError("empty commitment list")
    return total


def interpolating_value(identifiers: Sequence[int], identifier: int) -> bytes:
    """Lagrange coefficient of ``identifier`` at x = 0 over ``identifiers`` (RFC 9591 §4.2)."""
    if identifier not in identifiers or len(set(identifiers)) != len(identifiers):
        raise ThresholdError("invalid participant list for interpolation")
    numerator, denominator = _ONE, _ONE
    x_i = scalar_from_int(identifier)
    for other in identifiers:
        if other == identifier:
            continue
        x_j = scalar_from_int(other)
        numerator = _mul(numerator, x_j)
        denominator = _mul(denominator, _sub(x_j, x_i))
    return _mul(numerator, bindings.crypto_core_ed25519_scalar_invert(denominator))


def challenge(group_commitment_: bytes, group_public_key: bytes, message: bytes) -> bytes:
    return h2(group_commitment_ + group_public_key + message)


# ---------------------------------------------------------------------------------------------------------------
# Round two, share verification, aggregation (RFC 9591 §5.2, §5.3, §5.4)


def sign_share(
    share: SecretShare, nonces: Nonces, message: bytes, commitments: Sequence[Commitment], group_public_key: bytes
) -> bytes:
    """z_i = d_i + e_i·rho_i + λ_i·s_i·c. The caller must never call this twice with the same ``nonces``."""
    return sign_share_and_commitment(share, nonces, message, commitments, group_public_key)[0]


def sign_share_and_commitment(
    share: SecretShare, nonces: Nonces, message: bytes, commitments: Sequence[Commitment], group_public_key: bytes
) -> tuple[bytes, bytes]:
    """(z_i, R): the share and the group commitment it belongs to (the cosigner records R in its state).

    ``group_public_key`` is trusted (it comes from the checked key package); every commitment is validated.
    """
    own = Commitment(share.identifier, *nonces.public)
    mine = next((c for c in commitments if c.identifier == share.identifier), None)
    if mine is None:
        raise ThresholdError(f"participant {share.identifier} is not in the commitment list")
    if mine != own:
        raise ThresholdError(f"participant {share.identifier}'s commitment in the list is not this session's")
    ordered = _sorted_checked(commitments, known=own)
    factors = _binding_factors(group_public_key, ordered, message)
    big_r = _group_commitment(ordered, factors)
    lam = interpolating_value([c.identifier for c in ordered], share.identifier)
    c = challenge(big_r, group_public_key, message)
    z = _add(_add(nonces.hiding, _mul(nonces.binding, factors[share.identifier])), _mul(lam, _mul(share.scalar, c)))
    return z, big_r


def verify_share(
    identifier: int,
    verifying_share: bytes,
    signature_share: bytes,
    message: bytes,
    commitments: Sequence[Commitment],
    group_public_key: bytes,
) -> bool:
    """G·z_i == D_i + E_i·rho_i + Y_i·(c·λ_i): a share from a faulty or lying participant is detected."""
    try:
        ordered = _sorted_checked(commitments)
        factors = _binding_factors(group_public_key, ordered, message)
        big_r = _group_commitment(ordered, factors)
        return _share_ok(
            identifier, verifying_share, signature_share, message, ordered, factors, big_r, group_public_key
        )
    except ThresholdError:
        return False


def _share_ok(
    identifier: int,
    verifying_share: bytes,
    signature_share: bytes,
    message: bytes,
    ordered: Sequence[Commitment],
    factors: Mapping[int, bytes],
    big_r: bytes,
    group_public_key: bytes,
) -> bool:
    try:
        check_scalar(signature_share, "the signature share")
        check_element(verifying_share, "the verifying share")
        mine = next(c for c in ordered if c.identifier == identifier)
        lam = interpolating_value([c.identifier for c in ordered], identifier)
        c = challenge(big_r, group_public_key, message)
        left = _base_mul(signature_share)
        right = _point_add(
            _point_add(mine.hiding, _point_mul(factors[identifier], mine.binding)),
            _point_mul(_mul(c, lam), verifying_share),
        )
    except (ThresholdError, StopIteration):
        return False
    return left == right


def aggregate(
    package: PublicKeyPackage, message: bytes, commitments: Sequence[Commitment], shares: Mapping[int, bytes]
) -> bytes:
    """(R, Σ z_i): a plain 64-byte Ed25519 signature under the group key, returned only once it verifies.

    Refused with fewer than t participants. The sum is checked as one Ed25519 signature (one verification
    instead of t share checks); when it fails, each share is checked (RFC 9591 §5.4) so that the error names
    the participant whose share is wrong: the coordinator then leaves it out.
    """
    ordered = _sorted_checked(commitments)
    ids = [c.identifier for c in ordered]
    if len(ids) < package.min_signers:
        raise ThresholdError(f"{len(ids)} participants, the threshold is {package.min_signers}")
    if sorted(shares) != ids:
        raise ThresholdError("signature shares do not match the commitment list")
    for identifier in ids:
        check_scalar(shares[identifier], f"participant {identifier}'s signature share")
    factors = _binding_factors(package.group_public_key, ordered, message)
    big_r = _group_commitment(ordered, factors)
    z = _ZERO
    for identifier in ids:
        z = _add(z, shares[identifier])
    signature = big_r + z
    try:
        VerifyKey(package.group_public_key).verify(message, signature)
    except (BadSignatureError, ValueError):
        for identifier in ids:
            verifying = package.verifying_shares.get(identifier)
            if verifying is None or not _share_ok(
                identifier, verifying, shares[identifier], message, ordered, factors, big_r, package.group_public_key
            ):
                raise ThresholdError(f"participant {identifier}'s signature share does not verify") from None
        raise ThresholdError("the aggregate signature does not verify") from None
    return signature


def crypto_public(scalar: bytes) -> bytes:
    """G·scalar: the public key (or verifying share) of a secret scalar."""
    return _base_mul(check_scalar(scalar, "the secret scalar"))
