"""The in-process key holder against forged input: it trusts only the sign bytes, refuses with the project's own
errors, and leaves the double-sign state byte for byte as it was. Real config, real keys, real state files."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey, VerifyKey

from pykms.config import load_config
from pykms.errors import (
    ChainIdMismatch,
    ConflictError,
    DoubleSignError,
    InvalidRequest,
    ProviderError,
    RegressionError,
)
from pykms.harness.demo import write_demo_home
from pykms.harness.simulator import PRECOMMIT, PREVOTE, make_proposal, make_vote
from pykms.keyholder.local import LocalKeyHolder
from pykms.privval.signbytes import proposal_sign_bytes, vote_extension_sign_bytes, vote_sign_bytes
from pykms.providers.softsign import SoftsignSigner

CHAIN = "kh-chain"
TS = (1_700_000_000, 0)


def vote(height: int, step: int = PREVOTE, block: str = "b", round_: int = 0, ts: tuple[int, int] = TS) -> bytes:
    return vote_sign_bytes(CHAIN, make_vote(height, round_, step, block, timestamp=ts))


def extension(height: int, round_: int = 0, chain: str = CHAIN) -> bytes:
    return vote_extension_sign_bytes(chain, make_vote(height, round_, PRECOMMIT, "b", extension=b"ext"))


@pytest.fixture(params=["json", "slots"])
def home(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    config = write_demo_home(tmp_path, "tcp://127.0.0.1:1", chain_id=CHAIN, state_format=request.param)
    text = config.read_text().replace(
        "[[providers.softsign]]", f'audit_log = "{tmp_path / "audit.log"}"\n\n[[providers.softsign]]'
    )
    config.write_text(text)
    return tmp_path


@pytest.fixture
def holder(home: Path) -> Iterator[LocalKeyHolder]:
    kh = LocalKeyHolder(load_config(home / "tmkms.toml"))
    yield kh
    kh.close()


def state_bytes(home: Path) -> bytes:
    return (home / "state" / f"{CHAIN}_priv_validator_state.json").read_bytes()


def test_signs_and_serves_the_configured_chain(holder: LocalKeyHolder, home: Path) -> None:
    key = holder.chains()[CHAIN]
    assert (key.key_type, key.signs_extensions, len(key.public_key)) == ("ed25519", True, 32)
    assert holder.health() == {CHAIN: "ok"}
    signed = holder.sign(CHAIN, vote(5, PRECOMMIT), extension(5))
    VerifyKey(key.public_key).verify(vote(5, PRECOMMIT), signed.signature)
    VerifyKey(key.public_key).verify(extension(5), signed.extension_signature)
    assert signed.fresh and signed.timestamp is None
    # The twin sentry's identical request: the stored signature, and the extension signature reused.
    again = holder.sign(CHAIN, vote(5, PRECOMMIT), extension(5))
    assert (again.signature, again.extension_signature, again.fresh) == (
        signed.signature,
        signed.extension_signature,
        False,
    )
    records = (home / "audit.log").read_text()
    assert records.count('"outcome":"signed"') + records.count('"outcome": "signed"') == 1


def test_timestamp_only_repeat_returns_the_stored_timestamp(holder: LocalKeyHolder) -> None:
    first = holder.sign(CHAIN, vote(6, ts=(100, 5)))
    later = holder.sign(CHAIN, vote(6, ts=(200, 7)))
    assert (later.signature, later.timestamp, later.fresh) == (first.signature, (100, 5), False)
    VerifyKey(holder.chains()[CHAIN].public_key).verify(vote(6, ts=(100, 5)), later.signature)


OTHER_CHAIN_VOTE = vote_sign_bytes("other-chain", make_vote(9, 0, PREVOTE, "b", timestamp=TS))
PROPOSAL = proposal_sign_bytes(CHAIN, make_proposal(9, 0, "b", timestamp=TS))

FORGED: list[tuple[str, bytes, bytes, type[Exception]]] = [
    ("another chain's vote", OTHER_CHAIN_VOTE, b"", ChainIdMismatch),
    ("garbage", b"\x05hello", b"", InvalidRequest),
    ("empty", b"", b"", InvalidRequest),
    ("a truncated vote", vote(9)[:-1], b"", InvalidRequest),
    ("a vote with a trailing byte", vote(9) + b"\x00", b"", InvalidRequest),
    ("an extension as the vote", extension(9), b"", InvalidRequest),
    ("an extension for another height", vote(9, PRECOMMIT), extension(10), InvalidRequest),
    ("an extension for another round", vote(9, PRECOMMIT), extension(9, round_=1), InvalidRequest),
    ("an extension for another chain", vote(9, PRECOMMIT), extension(9, chain="other-chain"), InvalidRequest),
    ("an extension with a prevote", vote(9, PREVOTE), extension(9), InvalidRequest),
    ("an extension with a nil precommit", vote(9, PRECOMMIT, block=""), extension(9), InvalidRequest),
    ("a vote as the extension", vote(9, PRECOMMIT), vote(9, PRECOMMIT), InvalidRequest),
    ("a proposal with an extension", PROPOSAL, extension(9), InvalidRequest),
    ("a regression", vote(7), b"", RegressionError),
    ("a conflicting vote", vote(8, block="other"), b"", ConflictError),
]  # fmt: skip


@pytest.mark.parametrize(("what", "sign_bytes", "ext", "error"), FORGED, ids=[f[0] for f in FORGED])
def test_forged_input_is_refused_and_the_state_unchanged(
    holder: LocalKeyHolder, home: Path, what: str, sign_bytes: bytes, ext: bytes, error: type[Exception]
) -> None:
    holder.sign(CHAIN, vote(8))
    before = state_bytes(home)
    with pytest.raises(error):
        holder.sign(CHAIN, sign_bytes, ext)
    assert state_bytes(home) == before
    # Still serving, and the next honest request signs.
    assert holder.sign(CHAIN, vote(8, PRECOMMIT)).fresh


def test_double_signs_carry_the_node_code(holder: LocalKeyHolder) -> None:
    holder.sign(CHAIN, vote(8))
    with pytest.raises(DoubleSignError) as caught:
        holder.sign(CHAIN, vote(8, block="other"))
    assert caught.value.code == 2


def test_unknown_chain_is_refused(holder: LocalKeyHolder) -> None:
    with pytest.raises(ChainIdMismatch):
        holder.sign("not-served", vote(1))


def test_a_stored_signature_that_does_not_verify_never_leaves(home: Path) -> None:
    config = load_config(home / "tmkms.toml")
    kh = LocalKeyHolder(config)
    stored = kh.sign(CHAIN, vote(4))
    kh.close()
    # Another key over the same state: the stored signature is not this key's, so a repeat must not return it.
    other = SoftsignSigner(SigningKey(hashlib.sha256(b"other key").digest()))
    kh = LocalKeyHolder(config, {CHAIN: other})
    try:
        with pytest.raises(ProviderError):
            kh.sign(CHAIN, vote(4))
        assert stored.signature
    finally:
        kh.close()


def test_untrusted_state_stops_the_chain(home: Path) -> None:
    path = home / "state" / f"{CHAIN}_priv_validator_state.json"
    path.write_bytes(b"{not a state")
    kh = LocalKeyHolder(load_config(home / "tmkms.toml"))
    try:
        assert kh.chains() == {}
        assert kh.health()[CHAIN].startswith("stopped: ")
        with pytest.raises(ChainIdMismatch):
            kh.sign(CHAIN, vote(1))
    finally:
        kh.close()


def test_only_project_errors_escape_a_backend_bug(holder: LocalKeyHolder, home: Path) -> None:
    """A guard that fails with a foreign exception (a bug): the caller gets a ProviderError, nothing signed."""
    guard = holder.guard(CHAIN)

    def broken(*_args: object) -> object:
        raise RuntimeError("bug in a backend")

    before = state_bytes(home)
    guard.check_and_sign = broken  # type: ignore[method-assign]
    with pytest.raises(ProviderError, match="internal error"):
        holder.sign(CHAIN, vote(3))
    assert state_bytes(home) == before
