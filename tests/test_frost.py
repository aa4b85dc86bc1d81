"""FROST(Ed25519, SHA-512): RFC 9591 vectors and properties.

Vector source: RFC 9591 Appendix E.1, "FROST(Ed25519, SHA-512)" (the only Ed25519 vector set in the RFC), as
carried in machine-readable form by github.com/ZcashFoundation/frost ``frost-ed25519/tests/helpers/vectors.json``
(commit 7c706db67037069e9aafa4408ce9f3d846dfccd3). Values below are copied from that file, field by field.
"""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_core_ed25519_scalar_add
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from pykms.errors import ThresholdError
from pykms.threshold import frost

X = bytes.fromhex

# ---- RFC 9591 Appendix E.1 ------------------------------------------------------------------------------------
GROUP_SECRET_KEY = X("7b1c33d3f5291d85de664833beb1ad469f7fb6025a0ec78b3a790c6e13a98304")
GROUP_PUBLIC_KEY = X("15d21ccd7ee42959562fc8aa63224c8851fb3ec85a3faf66040d380fb9738673")
MESSAGE = X("74657374")
SHARE_POLYNOMIAL_COEFFICIENTS = [X("178199860edd8c62f5212ee91eff1295d0d670ab4ed4506866bae57e7030b204")]
PARTICIPANT_SHARES = {
    1: X("929dcc590407aae7d388761cddb0c0db6f5627aea8e217f4a033f2ec83d93509"),
    2: X("a91e66e012e4364ac9aaa405fcafd370402d9859f7b6685c07eed76bf409e80d"),
    3: X("d3cb090a075eb154e82fdb4b3cb507f110040905468bb9c46da8bdea643a9a02"),
}
PARTICIPANT_LIST = [1, 3]
ROUND_ONE = {
    1: {
        "hiding_nonce_randomness": X("06894e04ee4aceec8619d5f6a0a180e2f47194d2ac306cba586b555e7c48d765"),
        "binding_nonce_randomness": X("40d6f879ff22e22409f7d808fed81f37118e7d3e4af71c0f44c60207553bcbce"),
        "hiding_nonce": X("ef6599dea4010581a72b3018c37c29a4341d7cab0773e8687ca74dcf14009701"),
        "binding_nonce": X("2baadfa0c69aa60d517ad4751de372a73f9d89cfc39026601f18458cdec12605"),
        "hiding_nonce_commitment": X("9b116f12589591a7e23fe8048059ab10ab48e67739e7a2fb3890f61a7999478c"),
        "binding_nonce_commitment": X("c39b66b7dfccb122da24f13587f9a08c4347cae70046ca15169adf90ba65854d"),
        "binding_factor_input": X(
            "15d21ccd7ee42959562fc8aa63224c8851fb3ec85a3faf66040d380fb9738673504df914fa965023fb75c25ded4bb260f417de6d"
            "32e5c442c6ba313791cc9a4948d6273e8d3511f93348ea7a708a9b862bc73ba2a79cfdfe07729a193751cbc93df7739fd1223d86"
            "97dfc21b1679435bafda1f92815944f28d2faf21ded33ae94a16100090ae7d83555c9b2d961e3d5d1b62828e8cb58a88a73cda40"
            "4f8f725a0100000000000000000000000000000000000000000000000000000000000000"
        ),
        "binding_factor": X("ff960a65374e216a0918729b153466016664fa980d409bc3f308daa7acb30d0d"),
    },
    3: {
        "hiding_nonce_randomness": X("fa5d950626782aade9e33fa781376d4888c2d1de7c37518bc248eb818ed0cdde"),
        "binding_nonce_randomness": X("7459a4d14ded0e365b085271be8dc6600d5b88f3978a2174297ffa32001a5afc"),
        "hiding_nonce": X("80f8d9a4b8f9366e1a0b618107c907cd3ee29fa9bb40b4691cc1bde696240005"),
        "binding_nonce": X("2610b664a5a187b4855e87d2ff485bebdf043dc2f161fcd4854cd01dc0276404"),
        "hiding_nonce_commitment": X("e679a2a971748ccfaabead4dbe8ac1def61275c186c79d471e1e45091ad1e687"),
        "binding_nonce_commitment": X("b2a942478453fabb6bd3181c56ba657413447b4136e1daea2484d396d1a516b3"),
        "binding_factor_input": X(
            "15d21ccd7ee42959562fc8aa63224c8851fb3ec85a3faf66040d380fb9738673504df914fa965023fb75c25ded4bb260f417de6d"
            "32e5c442c6ba313791cc9a4948d6273e8d3511f93348ea7a708a9b862bc73ba2a79cfdfe07729a193751cbc93df7739fd1223d86"
            "97dfc21b1679435bafda1f92815944f28d2faf21ded33ae94a16100090ae7d83555c9b2d961e3d5d1b62828e8cb58a88a73cda40"
            "4f8f725a0300000000000000000000000000000000000000000000000000000000000000"
        ),
        "binding_factor": X("279d48ec56f16d234c09ea62f3d02ab776ee38e03f66b20f939f1316e13df10f"),
    },
}
SIG_SHARES = {
    1: X("60997f0142e43e8005027fe5ab7447dac00d22c2d7ddd9571a02613ba7d81c08"),
    3: X("79390e78bc59699c7af831f8f5fb478ec871a85f561a8641b5670ac4443f720f"),
}
FINAL_SIG = X(
    "154fb694ee7fcb37bf2381d94488c2a84b03b3352ad085feca81ad26d45852b7"
    "ecfe971ce4da95c4a95db93ac376b053897fca212ef85f99cf696bffeb178f07"
)


def _rfc_shares() -> list[frost.SecretShare]:
    return frost.split_with_coefficients(GROUP_SECRET_KEY, SHARE_POLYNOMIAL_COEFFICIENTS, 3)


def _rfc_round_one() -> tuple[dict[int, frost.Nonces], list[frost.Commitment]]:
    shares = {s.identifier: s for s in _rfc_shares()}
    nonces: dict[int, frost.Nonces] = {}
    commitments: list[frost.Commitment] = []
    for ident in PARTICIPANT_LIST:
        v = ROUND_ONE[ident]
        feed = iter([v["hiding_nonce_randomness"], v["binding_nonce_randomness"]])
        n, c = frost.commit(shares[ident], rng=lambda size, feed=feed: next(feed))
        nonces[ident] = n
        commitments.append(c)
    return nonces, commitments


def test_rfc9591_group_key_and_shares() -> None:
    assert frost.crypto_public(GROUP_SECRET_KEY) == GROUP_PUBLIC_KEY
    assert {s.identifier: s.scalar for s in _rfc_shares()} == PARTICIPANT_SHARES


def test_rfc9591_round_one() -> None:
    nonces, commitments = _rfc_round_one()
    for c in commitments:
        v = ROUND_ONE[c.identifier]
        assert nonces[c.identifier].hiding == v["hiding_nonce"]
        assert nonces[c.identifier].binding == v["binding_nonce"]
        assert c.hiding == v["hiding_nonce_commitment"]
        assert c.binding == v["binding_nonce_commitment"]
    prefix = GROUP_PUBLIC_KEY + frost.h4(MESSAGE) + frost.h5(frost.encode_commitment_list(commitments))
    factors = frost.binding_factors(GROUP_PUBLIC_KEY, commitments, MESSAGE)
    for ident in PARTICIPANT_LIST:
        assert prefix + frost.scalar_from_int(ident) == ROUND_ONE[ident]["binding_factor_input"]
        assert factors[ident] == ROUND_ONE[ident]["binding_factor"]


def test_rfc9591_round_two_and_aggregate() -> None:
    nonces, commitments = _rfc_round_one()
    shares = {s.identifier: s for s in _rfc_shares()}
    sig_shares = {
        ident: frost.sign_share(shares[ident], nonces[ident], MESSAGE, commitments, GROUP_PUBLIC_KEY)
        for ident in PARTICIPANT_LIST
    }
    assert sig_shares == SIG_SHARES
    package = frost.public_key_package(list(shares.values()), 2, GROUP_PUBLIC_KEY)
    for ident in PARTICIPANT_LIST:
        assert frost.verify_share(
            ident, package.verifying_shares[ident], SIG_SHARES[ident], MESSAGE, commitments, GROUP_PUBLIC_KEY
        )
    signature = frost.aggregate(package, MESSAGE, commitments, SIG_SHARES)
    assert signature == FINAL_SIG
    VerifyKey(GROUP_PUBLIC_KEY).verify(MESSAGE, signature)


def test_tampered_share_is_named() -> None:
    _nonces, commitments = _rfc_round_one()
    package = frost.public_key_package(_rfc_shares(), 2, GROUP_PUBLIC_KEY)
    bad = dict(SIG_SHARES)
    bad[3] = crypto_core_ed25519_scalar_add(bad[3], frost.scalar_from_int(1))
    with pytest.raises(ThresholdError, match="participant 3"):
        frost.aggregate(package, MESSAGE, commitments, bad)


def test_invalid_commitments_refused() -> None:
    _nonces, commitments = _rfc_round_one()
    identity = (1).to_bytes(32, "little")  # the neutral element's encoding
    for bad in (identity, bytes(32), b"\xff" * 32, commitments[0].hiding[:31]):
        broken = [frost.Commitment(1, bad, commitments[0].binding), commitments[1]]
        with pytest.raises(ThresholdError):
            frost.binding_factors(GROUP_PUBLIC_KEY, broken, MESSAGE)
    with pytest.raises(ThresholdError):
        frost.binding_factors(GROUP_PUBLIC_KEY, [commitments[0], commitments[0]], MESSAGE)


def test_share_refuses_a_commitment_that_is_not_its_own() -> None:
    """A coordinator that swaps in another commitment for this participant gets no share."""
    nonces, commitments = _rfc_round_one()
    share = _rfc_shares()[0]
    with pytest.raises(ThresholdError, match="not this session's"):
        frost.sign_share(share, nonces[3], MESSAGE, commitments, GROUP_PUBLIC_KEY)


def test_existing_seed_keeps_its_public_key() -> None:
    """The split works on the validator's own key: the group key is its Ed25519 public key."""
    seed = hashlib.sha256(b"validator").digest()
    scalar = frost.secret_scalar_from_seed(seed)
    assert frost.crypto_public(scalar) == bytes(SigningKey(seed).verify_key)


# ---- properties -----------------------------------------------------------------------------------------------


def _session(
    shares: list[frost.SecretShare], chosen: tuple[int, ...], message: bytes, group_public_key: bytes
) -> tuple[list[frost.Commitment], dict[int, bytes]]:
    by_id = {s.identifier: s for s in shares}
    rounds = {i: frost.commit(by_id[i]) for i in chosen}
    commitments = [c for _, c in rounds.values()]
    sig = {i: frost.sign_share(by_id[i], rounds[i][0], message, commitments, group_public_key) for i in chosen}
    return commitments, sig


@settings(max_examples=25, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    n=st.integers(min_value=2, max_value=6),
    data=st.data(),
    message=st.binary(max_size=300),
)
def test_any_t_of_n_signs(seed: bytes, n: int, data: st.DataObject, message: bytes) -> None:
    t = data.draw(st.integers(min_value=2, max_value=n))
    chosen = tuple(sorted(data.draw(st.sets(st.integers(1, n), min_size=t, max_size=n))))
    public = bytes(SigningKey(seed).verify_key)
    shares = frost.split_secret(frost.secret_scalar_from_seed(seed), t, n)
    package = frost.public_key_package(shares, t, public)
    commitments, sig = _session(shares, chosen, message, public)
    signature = frost.aggregate(package, message, commitments, sig)
    VerifyKey(public).verify(message, signature)


@settings(max_examples=25, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32), n=st.integers(min_value=2, max_value=6), data=st.data())
def test_t_minus_one_cannot_sign(seed: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(min_value=2, max_value=n))
    chosen = tuple(sorted(data.draw(st.sets(st.integers(1, n), min_size=t - 1, max_size=t - 1))))
    message = b"conflicting vote"
    public = bytes(SigningKey(seed).verify_key)
    shares = frost.split_secret(frost.secret_scalar_from_seed(seed), t, n)
    package = frost.public_key_package(shares, t, public)
    commitments, sig = _session(shares, chosen, message, public)
    with pytest.raises(ThresholdError, match="threshold"):
        frost.aggregate(package, message, commitments, sig)
    # Forced past the check (as an attacker holding t-1 shares would), the sum does not verify.
    factors = frost.binding_factors(public, commitments, message)
    big_r = frost.group_commitment(commitments, factors)
    z = frost.scalar_from_int(0)
    for share in sig.values():
        z = crypto_core_ed25519_scalar_add(z, share)
    with pytest.raises(BadSignatureError):
        VerifyKey(public).verify(message, big_r + z)


def test_every_pair_of_three_signs() -> None:
    seed = bytes(range(32))
    public = bytes(SigningKey(seed).verify_key)
    shares = frost.split_secret(frost.secret_scalar_from_seed(seed), 2, 3)
    package = frost.public_key_package(shares, 2, public)
    for pair in itertools.combinations((1, 2, 3), 2):
        commitments, sig = _session(shares, pair, b"m", public)
        VerifyKey(public).verify(b"m", frost.aggregate(package, b"m", commitments, sig))
