"""Threshold signing without processes: key split, the cosigner's guard and nonces, sign-bytes decoding, config.

Real files (0600 shares, durable JSON state), real FROST arithmetic; the cosigners here are in-process objects
driven by a hand-rolled coordinator, so each test can play the compromised coordinator the design must resist.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from pykms.cli.main import main as pykms_main
from pykms.config import parse_config
from pykms.errors import (
    ConfigError,
    ConflictError,
    InvalidRequest,
    KeyFileError,
    RegressionError,
    StateMissing,
    ThresholdError,
)
from pykms.guard.state import SignState
from pykms.guard.store import JsonStateStore, create_state_file
from pykms.privval.signbytes import decode_sign_bytes as classify
from pykms.privval.signbytes import proposal_sign_bytes, vote_extension_sign_bytes, vote_sign_bytes
from pykms.proto.tendermint.types import types_pb2
from pykms.threshold import frost
from pykms.threshold.config import parse_cosigner_config
from pykms.threshold.cosigner import Cosigner
from pykms.threshold.keys import load_group_file, load_share_file, split_key_file
from tests.broken_signers import write_tmhome

CHAIN = "test-chain"


def vote(height: int, round_: int = 0, type_: int = 1, block: bytes = b"", ts: int = 1) -> bytes:
    v = types_pb2.Vote(type=type_, height=height, round=round_)
    if block:
        v.block_id.hash = block
        v.block_id.part_set_header.total = 1
        v.block_id.part_set_header.hash = hashlib.sha256(block).digest()
    v.timestamp.seconds = ts
    return vote_sign_bytes(CHAIN, v)


@pytest.fixture
def key_json(tmp_path: Path) -> Path:
    tmhome = write_tmhome(tmp_path / "tmhome")
    return tmhome / "config" / "priv_validator_key.json"


def _public_of(key_json: Path) -> bytes:
    import base64

    doc = json.loads(key_json.read_text())
    return base64.b64decode(doc["pub_key"]["value"])


# ---- split ----------------------------------------------------------------------------------------------------


def test_split_keeps_the_validator_key_and_writes_private_shares(tmp_path: Path, key_json: Path) -> None:
    out = tmp_path / "shares"
    assert pykms_main(["threshold", "split", str(key_json), str(out), "-t", "2", "-n", "3"]) == 0
    public = _public_of(key_json)
    package = load_group_file(out / "group.json")
    assert package.group_public_key == public and package.min_signers == 2
    loaded = []
    for i in (1, 2, 3):
        path = out / f"share-{i}.json"
        assert path.stat().st_mode & 0o777 == 0o600
        share, pkg = load_share_file(path)
        assert pkg == package and share.identifier == i
        loaded.append(share)
    # Any two of the written shares sign for the validator's own key.
    for pair in itertools.combinations(loaded, 2):
        rounds = {s.identifier: frost.commit(s) for s in pair}
        commitments = [c for _, c in rounds.values()]
        shares = {s.identifier: frost.sign_share(s, rounds[s.identifier][0], b"m", commitments, public) for s in pair}
        VerifyKey(public).verify(b"m", frost.aggregate(package, b"m", commitments, shares))


def test_split_refuses_a_minority_threshold_and_says_why(
    tmp_path: Path, key_json: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "shares"
    assert pykms_main(["threshold", "split", str(key_json), str(out), "-t", "2", "-n", "4"]) == 8
    err = capsys.readouterr().err
    assert "conflicting votes" in err and "--force" in err and "at least 3" in err
    assert not out.exists()
    assert pykms_main(["threshold", "split", str(key_json), str(out), "-t", "2", "-n", "4", "--force"]) == 0


def test_split_never_overwrites_and_refuses_open_keys(tmp_path: Path, key_json: Path) -> None:
    out = tmp_path / "shares"
    split_key_file(key_json, out, 2, 3)
    with pytest.raises(KeyFileError, match="already exists"):
        split_key_file(key_json, out, 2, 3)
    (out / "share-1.json").chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_share_file(out / "share-1.json")
    key_json.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        split_key_file(key_json, tmp_path / "other", 2, 3)


def test_tampered_share_file_is_refused(tmp_path: Path, key_json: Path) -> None:
    out = tmp_path / "shares"
    split_key_file(key_json, out, 2, 3)
    path = out / "share-2.json"
    doc = json.loads(path.read_text())
    doc["signing_share"] = frost.scalar_from_int(7).hex()
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match="does not match its verifying share"):
        load_share_file(path)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("identifier", 9, "malformed identifier"),
        ("threshold", 1, "not a valid FROST key package"),
        ("verifying_shares", {}, "not a valid FROST key package"),
    ],
)
def test_a_malformed_share_file_is_refused_even_under_python_O(
    tmp_path: Path, key_json: Path, field: str, value: object, error: str
) -> None:
    """The share file's checks are not asserts: ``python -O`` (which strips asserts) refuses the file too."""
    import subprocess
    import sys

    out = tmp_path / "shares"
    split_key_file(key_json, out, 2, 3)
    path = out / "share-1.json"
    doc = json.loads(path.read_text())
    doc[field] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(KeyFileError, match=error):
        load_share_file(path)
    probe = "import sys, pathlib, pykms.threshold.keys as k; k.load_share_file(pathlib.Path(sys.argv[1]))"
    run = subprocess.run([sys.executable, "-O", "-c", probe, str(path)], capture_output=True, text=True, check=False)
    assert run.returncode != 0
    assert "KeyFileError" in run.stderr and error in run.stderr


def test_softsign_key_splits_too(tmp_path: Path) -> None:
    from pykms.providers.softsign import keygen

    key = tmp_path / "consensus.key"
    public = keygen(key)
    package, _ = split_key_file(key, tmp_path / "shares", 3, 5)
    assert package.group_public_key == public


# ---- sign bytes a cosigner accepts -----------------------------------------------------------------------------


def test_classify_reads_votes_proposals_and_extensions() -> None:
    assert classify(vote(5, 1, 2, b"\x01" * 32)) == classify(vote(5, 1, 2, b"\x01" * 32))
    assert (classify(vote(5, 1, 1)).step, classify(vote(5, 1, 2)).step) == (2, 3)
    assert (classify(vote(5, 1, 2, b"\x01" * 32)).kind, classify(vote(5, 1, 2, b"\x01" * 32)).block_hash) == (
        "precommit",
        b"\x01" * 32,
    )
    p = types_pb2.Proposal(type=32, height=7, round=2, pol_round=-1)
    p.timestamp.seconds = 3
    got = classify(proposal_sign_bytes(CHAIN, p))
    assert (got.kind, got.chain_id, got.height, got.round, got.step) == ("proposal", CHAIN, 7, 2, 1)
    v = types_pb2.Vote(type=2, height=9, round=0, extension=b"ext")
    ext = classify(vote_extension_sign_bytes(CHAIN, v))
    assert (ext.kind, ext.height) == ("extension", 9)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x05abc", b"\x03\xff\xff\xff", vote(5)[:-1], vote(5) + b"\x00", b"\x02\x08\x07"],
)
def test_classify_refuses_anything_else(data: bytes) -> None:
    with pytest.raises(InvalidRequest):
        classify(data)


def test_classify_refuses_an_unknown_field() -> None:
    body = vote(5)[1:] + b"\x78\x01"  # field 15, varint 1
    with pytest.raises(InvalidRequest):
        classify(bytes([len(body)]) + body)


# ---- the cosigner's guard and nonces ---------------------------------------------------------------------------


class Group:
    """Three in-process cosigners (2 of 3) over real state files, and a coordinator that may misbehave."""

    def __init__(self, root: Path) -> None:
        seed = hashlib.sha256(b"group").digest()
        self.public = bytes(SigningKey(seed).verify_key)
        shares = frost.split_secret(frost.secret_scalar_from_seed(seed), 2, 3)
        self.package = frost.public_key_package(shares, 2, self.public)
        self.root = root
        self.shares = shares
        for share in shares:
            create_state_file(self.state_path(share.identifier), SignState(0, 0, 0))
        self.cosigners = {s.identifier: self.open(s.identifier) for s in shares}

    def state_path(self, identifier: int) -> Path:
        return self.root / f"cosigner{identifier}.json"

    def open(self, identifier: int) -> Cosigner:
        share = self.shares[identifier - 1]
        return Cosigner(share, self.package, {CHAIN: JsonStateStore(self.state_path(identifier))})

    def restart(self, identifier: int) -> None:
        self.cosigners[identifier].close()
        self.cosigners[identifier] = self.open(identifier)

    def sign(self, ids: tuple[int, ...], message: bytes) -> bytes:
        sessions = {i: self.cosigners[i].commit() for i in ids}
        commitments = [c for _, c in sessions.values()]
        shares = {i: self.cosigners[i].sign(sessions[i][0], message, commitments) for i in ids}
        return frost.aggregate(self.package, message, commitments, shares)


@pytest.fixture
def group(tmp_path: Path) -> Group:
    return Group(tmp_path)


def test_cosigners_sign_votes_that_verify(group: Group) -> None:
    for height in range(1, 4):
        message = vote(height)
        VerifyKey(group.public).verify(message, group.sign((1, 3), message))
    assert group.cosigners[1].status()[CHAIN].height == 3
    assert group.cosigners[2].status()[CHAIN].height == 0


def test_a_nonce_signs_at_most_one_message(group: Group) -> None:
    c1, c2 = group.cosigners[1], group.cosigners[2]
    s1, k1 = c1.commit()
    _, k2 = c2.commit()
    c1.sign(s1, vote(1), [k1, k2])
    with pytest.raises(ThresholdError, match="already used"):
        c1.sign(s1, vote(1), [k1, k2])  # the very same request again: the nonce is gone
    with pytest.raises(ThresholdError, match="already used"):
        c1.sign(s1, vote(2), [k1, k2])


def test_a_refused_request_burns_its_nonce(group: Group) -> None:
    c1 = group.cosigners[1]
    group.sign((1, 2), vote(5, block=b"\x01" * 32))
    s1, k1 = c1.commit()
    _, k2 = group.cosigners[2].commit()
    with pytest.raises(ConflictError):
        c1.sign(s1, vote(5, block=b"\x02" * 32), [k1, k2])
    with pytest.raises(ThresholdError, match="already used"):
        c1.sign(s1, vote(6), [k1, k2])


def test_a_restart_discards_every_pending_nonce(group: Group) -> None:
    c1 = group.cosigners[1]
    s1, k1 = c1.commit()
    _, k2 = group.cosigners[2].commit()
    group.restart(1)
    with pytest.raises(ThresholdError, match="restart"):
        group.cosigners[1].sign(s1, vote(1), [k1, k2])


def test_a_commitment_list_without_our_commitment_is_refused(group: Group) -> None:
    c1 = group.cosigners[1]
    s1, _ = c1.commit()
    _, other1 = c1.commit()
    _, k2 = group.cosigners[2].commit()
    with pytest.raises(ThresholdError, match="this session's commitment"):
        c1.sign(s1, vote(1), [other1, k2])


def test_guard_rules_per_cosigner(group: Group) -> None:
    block_a, block_b = b"\x0a" * 32, b"\x0b" * 32
    group.sign((1, 2), vote(10, block=block_a, ts=100))
    # The same bytes again (another signer instance, a retry): fresh nonces, same message, a valid signature.
    VerifyKey(group.public).verify(vote(10, block=block_a, ts=100), group.sign((1, 2), vote(10, block=block_a, ts=100)))
    with pytest.raises(ConflictError, match="timestamp-only"):
        group.sign((1, 2), vote(10, block=block_a, ts=101))
    with pytest.raises(ConflictError):
        group.sign((1, 2), vote(10, block=block_b, ts=100))
    with pytest.raises(RegressionError):
        group.sign((1, 2), vote(9))
    group.restart(1)
    group.restart(2)  # the state survived: the conflict is still refused after a restart
    with pytest.raises(ConflictError):
        group.sign((1, 2), vote(10, block=block_b, ts=100))


def test_two_cosigner_pairs_never_yield_conflicting_signatures(group: Group) -> None:
    """A compromised coordinator asks every pair for a different vote at one height/round/step: one wins."""
    blocks = {pair: bytes([n]) * 32 for n, pair in enumerate(itertools.combinations((1, 2, 3), 2), start=1)}
    signed: list[bytes] = []
    for pair, block in blocks.items():
        message = vote(20, type_=2, block=block)
        try:
            signature = group.sign(pair, message)
        except (ConflictError, ThresholdError):
            continue
        VerifyKey(group.public).verify(message, signature)
        signed.append(message)
    assert len(signed) == 1


def test_unserved_chain_and_extensions(group: Group) -> None:
    other = types_pb2.Vote(type=1, height=3)
    other.timestamp.seconds = 1
    with pytest.raises(ThresholdError, match="not served"):
        group.sign((1, 2), vote_sign_bytes("other-chain", other))
    group.sign((1, 2), vote(30, type_=2, block=b"\x01" * 32))
    ext = vote_extension_sign_bytes(CHAIN, types_pb2.Vote(type=2, height=30, round=0, extension=b"x"))
    VerifyKey(group.public).verify(ext, group.sign((1, 2), ext))
    old = vote_extension_sign_bytes(CHAIN, types_pb2.Vote(type=2, height=29, round=0, extension=b"x"))
    with pytest.raises(RegressionError):
        group.sign((1, 2), old)


def test_missing_state_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(StateMissing):
        JsonStateStore(tmp_path / "absent.json")


# ---- configuration ---------------------------------------------------------------------------------------------

_ID = "ab" * 20


def test_cosigner_config_errors_name_key_and_fix(tmp_path: Path) -> None:
    base = {
        "listen_addr": "tcp://127.0.0.1:27001",
        "share_file": "s.json",
        "secret_key": "id.key",
        "allowed_signers": [_ID],
        "chain": [{"id": CHAIN, "state_file": "st.json"}],
    }
    config = parse_cosigner_config(base, tmp_path / "cosigner.toml")
    assert config.share_file == tmp_path / "s.json" and config.allowed_signers == (_ID,)
    for change, key in (
        ({"allowed_signers": []}, "allowed_signers"),
        ({"allowed_signers": ["xyz"]}, "allowed_signers[0]"),
        ({"listen_adr": "x"}, "listen_adr"),
        ({"chain": []}, "chain"),
    ):
        with pytest.raises(ConfigError) as err:
            parse_cosigner_config({**base, **change}, tmp_path / "cosigner.toml")
        assert f"`{key}`" in str(err.value) and "fix:" in str(err.value)


def _tmkms(cosigners: list[dict[str, str]], threshold: int = 2) -> dict[str, object]:
    return {
        "chain": [{"id": CHAIN, "key_format": {"type": "hex"}}],
        "providers": {
            "threshold": [
                {
                    "chain_ids": [CHAIN],
                    "threshold": threshold,
                    "group_file": "group.json",
                    "secret_key": "id.key",
                    "cosigners": cosigners,
                }
            ]
        },
    }


def test_threshold_provider_config(tmp_path: Path) -> None:
    addrs = [{"addr": f"tcp://{_ID}@127.0.0.1:{27001 + i}"} for i in range(3)]
    config = parse_config(_tmkms(addrs), tmp_path / "tmkms.toml")
    entry = config.providers.threshold[0]
    assert entry.threshold == 2 and entry.cosigners[2].port == 27003 and entry.cosigners[0].peer_id == _ID
    with pytest.raises(ConfigError, match="pinned by its node ID"):
        parse_config(_tmkms([{"addr": "tcp://127.0.0.1:1"}] * 3), tmp_path / "tmkms.toml")
    with pytest.raises(ConfigError, match="1 cosigners for threshold 2"):
        parse_config(_tmkms(addrs[:1]), tmp_path / "tmkms.toml")


def test_a_failed_persist_returns_no_share_and_burns_the_nonce(group: Group) -> None:
    from pykms.errors import PersistError

    cosigner = group.cosigners[1]
    store = cosigner._stores[CHAIN]
    real_save = store.save

    def failing_save(state: SignState) -> None:
        raise PersistError("disk full (injected)")

    store.save = failing_save  # type: ignore[method-assign]
    s1, k1 = cosigner.commit()
    _, k2 = group.cosigners[2].commit()
    with pytest.raises(PersistError):
        cosigner.sign(s1, vote(3), [k1, k2])
    assert cosigner.status()[CHAIN].height == 0  # nothing recorded, nothing released
    store.save = real_save  # type: ignore[method-assign]
    with pytest.raises(ThresholdError, match="already used"):
        cosigner.sign(s1, vote(3), [k1, k2])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    requests=st.lists(
        st.tuples(
            st.sampled_from([(1, 2), (1, 3), (2, 3), (1, 2, 3)]),  # which cosigners the coordinator asks
            st.integers(1, 3),  # height
            st.integers(0, 1),  # round
            st.sampled_from([1, 2]),  # prevote or precommit
            st.sampled_from([b"", b"\x0a" * 32, b"\x0b" * 32]),  # nil or one of two blocks
            st.integers(1, 2),  # timestamp
            st.booleans(),  # restart every cosigner before this request
        ),
        max_size=12,
    )
)
def test_model_no_two_payloads_signed_at_one_height_round_step(
    tmp_path_factory: pytest.TempPathFactory, requests: list[tuple[tuple[int, ...], int, int, int, bytes, int, bool]]
) -> None:
    """Whatever a coordinator asks, of whichever cosigners, in whatever order, across restarts: at most one
    payload gets a signature per height/round/step (timestamp aside, which FilePV treats as the same vote)."""
    group = Group(tmp_path_factory.mktemp("model"))
    signed: dict[tuple[int, int, int], bytes] = {}
    for ids, height, round_, type_, block, ts, restart in requests:
        if restart:
            for i in (1, 2, 3):
                group.restart(i)
        message = vote(height, round_, type_, block, ts)
        try:
            signature = group.sign(ids, message)
        except (ConflictError, RegressionError, ThresholdError):
            continue
        VerifyKey(group.public).verify(message, signature)
        key = (height, round_, type_ + 1)
        payload = vote(height, round_, type_, block, 0)  # the vote without its timestamp
        assert signed.setdefault(key, payload) == payload, f"two payloads signed at {key}"
    for cosigner in group.cosigners.values():
        cosigner.close()
