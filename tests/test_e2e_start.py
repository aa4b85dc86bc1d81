"""End to end: a real ``pykms start`` subprocess against the validator simulator over real sockets."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pykms.harness.simulator import PRECOMMIT, PREVOTE, make_proposal, make_vote
from pykms.privval import codec
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import proposal_sign_bytes, vote_extension_sign_bytes, vote_sign_bytes
from tests.e2e import accept, running_kms, verify

CHAIN = "test-chain"


def _state(tmp_path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        (tmp_path / "kms" / "state" / f"{CHAIN}_priv_validator_state.json").read_text()
    )
    return data


@pytest.mark.parametrize(
    ("dialect", "unix"),
    [(Dialect.V0_34, False), (Dialect.V0_38, False), (Dialect.V1_0, False), (Dialect.V0_38, True)],
    ids=["v0.34-tcp", "v0.38-tcp", "v1.0-tcp", "v0.38-unix"],
)
def test_signs_and_verifies_every_signature(tmp_path: Path, dialect: Dialect, unix: bool) -> None:
    with running_kms(tmp_path, dialect=dialect, unix=unix) as (kms, (sim,)):
        link = accept(sim, kms)
        pub = bytes(link.pubkey().pub_key)
        assert len(pub) == 32
        assert isinstance(link.ping(), codec.PingResponse)
        for height in range(1, 6):
            prop = make_proposal(height, 0, f"b{height}")
            resp = link.sign_proposal(prop)
            assert resp.error is None
            assert verify(pub, proposal_sign_bytes(CHAIN, prop), bytes(resp.proposal.signature))
            for vote_type in (PREVOTE, PRECOMMIT):
                ext = b"ext" if vote_type == PRECOMMIT and dialect is not Dialect.V0_34 else b""
                vote = make_vote(height, 0, vote_type, f"b{height}", extension=ext)
                resp = link.sign_vote(vote)
                assert resp.error is None, resp.error
                assert verify(pub, vote_sign_bytes(CHAIN, vote), bytes(resp.vote.signature))
                ext_sig = bytes(resp.vote.extension_signature)
                if dialect in (Dialect.V0_38, Dialect.V1_0) and vote_type == PRECOMMIT:
                    assert verify(pub, vote_extension_sign_bytes(CHAIN, vote), ext_sig)
                else:
                    assert ext_sig == b""
                # every field survives the round trip (tmkms lost fields 9/10)
                assert bytes(resp.vote.extension) == ext
                assert bytes(resp.vote.validator_address) == bytes(vote.validator_address)
        # a nil precommit gets no extension signature
        nil = link.sign_vote(make_vote(9, 0, PRECOMMIT, b""))
        assert nil.error is None and bytes(nil.vote.extension_signature) == b""
        if dialect is Dialect.V1_0:
            skip = link.sign_vote(make_vote(10, 0, PRECOMMIT, b"x"), skip_extension_signing=True)
            assert skip.error is None and bytes(skip.vote.extension_signature) == b""
        link.close()
    state = _state(tmp_path)
    assert state["height"] in ("9", "10")


def test_double_sign_refused_and_repeat_identical(tmp_path: Path) -> None:
    with running_kms(tmp_path) as (kms, (sim,)):
        link = accept(sim, kms)
        ts = (1_700_000_000, 5)
        first = link.sign_vote(make_vote(7, 0, PREVOTE, b"A", timestamp=ts))
        assert first.error is None
        before = _state(tmp_path)
        again = link.sign_vote(make_vote(7, 0, PREVOTE, b"A", timestamp=ts))
        assert bytes(again.vote.signature) == bytes(first.vote.signature)
        # timestamp-only difference: the stored signature with the stored timestamp (FilePV)
        later = link.sign_vote(make_vote(7, 0, PREVOTE, b"A", timestamp=(1_700_000_009, 0)))
        assert later.error is None
        assert bytes(later.vote.signature) == bytes(first.vote.signature)
        assert (later.vote.timestamp.seconds, later.vote.timestamp.nanos) == ts
        conflict = link.sign_vote(make_vote(7, 0, PREVOTE, b"B", timestamp=ts))
        assert conflict.error is not None and "conflict" in conflict.error.description
        regress = link.sign_vote(make_vote(6, 0, PRECOMMIT, b"A"))
        assert regress.error is not None and "regression" in regress.error.description
        assert _state(tmp_path) == before
        # the refusals did not close the connection
        assert isinstance(link.ping(), codec.PingResponse)
        link.close()


def test_wrong_chain_and_garbage_do_not_hurt_other_connections(tmp_path: Path) -> None:
    with running_kms(tmp_path, sentries=2) as (kms, sims):
        links = [accept(sim, kms) for sim in sims]
        ok = links[0].sign_vote(make_vote(3, 0, PREVOTE, b"A"))
        assert ok.error is None
        wrong = links[1].sign_vote(make_vote(4, 0, PREVOTE, b"A"), chain_id="other-chain")
        assert wrong.error is not None
        state = _state(tmp_path)
        assert state["height"] == "3"
        # garbage on sentry 1: that connection closes; sentry 0 keeps signing
        links[1].send_raw(b"\xff" * 2000)
        with pytest.raises(Exception):
            links[1].recv_body(timeout=5)
        again = links[0].sign_vote(make_vote(4, 0, PREVOTE, b"A"))
        assert again.error is None
        # and sentry 1 comes back by itself
        relink = accept(sims[1], kms)
        resp = relink.sign_vote(make_vote(4, 0, PREVOTE, b"A"))
        assert resp.error is None and bytes(resp.vote.signature) == bytes(again.vote.signature)
        for link in (links[0], relink):
            link.close()


def test_two_sentries_conflicting_at_once_exactly_one_signed(tmp_path: Path) -> None:
    with running_kms(tmp_path, sentries=2) as (kms, sims):
        links = [accept(sim, kms) for sim in sims]
        results: dict[int, object] = {}
        for height in range(20, 40):
            barrier = threading.Barrier(2)

            def go(i: int, h: int = height, b: threading.Barrier = barrier) -> None:
                b.wait()
                results[i] = links[i].sign_vote(make_vote(h, 0, PREVOTE, f"block-{i}", timestamp=(1, 0)))

            threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            signed = [r for r in results.values() if getattr(r, "error", None) is None]
            assert len(signed) == 1, f"height {height}: {len(signed)} signatures"
        for link in links:
            link.close()


def test_sigterm_exits_cleanly_and_state_is_whole(tmp_path: Path) -> None:
    with running_kms(tmp_path) as (kms, (sim,)):
        link = accept(sim, kms)
        for h in range(1, 30):
            assert link.sign_vote(make_vote(h, 0, PREVOTE, b"A")).error is None
        code = kms.stop()
        assert code == 0, kms.log_text()
    assert _state(tmp_path)["height"] == "29"


def test_a_tmkms_config_starts_pykms_unchanged(tmp_path: Path) -> None:
    """tmkms v0.15's own example (softsign) with the node address and the pinned node ID of our simulator."""
    import base64
    import os
    import shutil

    from pykms.harness.simulator import ValidatorSimulator
    from pykms.keyfiles import write_secret_file
    from pykms.providers.softsign import keygen
    from tests.e2e import KmsProcess

    home = tmp_path / "tmkms-home"
    (home / "secrets").mkdir(parents=True)
    (home / "state").mkdir()
    shutil.copy(Path(__file__).parent / "fixtures" / "tmkms" / "tmkms.toml", home / "tmkms.toml")
    keygen(home / "secrets" / "consensus-ed25519.key")
    write_secret_file(home / "secrets" / "kms-identity.key", base64.b64encode(os.urandom(32)))
    # the operator imports tmkms's state once (here: tmkms's step numbering, 1 = prevote)
    tmkms_state = tmp_path / "cosmoshub-tmkms-state.json"
    tmkms_state.write_text('{"height": "10", "round": "0", "step": 1, "block_id": null}')
    from pykms.cli.main import main
    from pykms.secretconn.core import node_id

    assert main(["state", "import", "-c", str(home / "tmkms.toml"), "--chain", "cosmoshub-3", str(tmkms_state)]) == 0
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id="cosmoshub-3", dialect=Dialect.V0_38)
    addr = sim.listen()
    text = (home / "tmkms.toml").read_text()
    # only the node's address changes: ID@host:port, with the simulator's real node ID (pinning is exercised)
    text = text.replace("f88883b673fc69d7869cab098de3bafc2ff76eb8@example1.example.com:26658",
                        f"{node_id(bytes(sim.identity.verify_key))}@{addr.removeprefix('tcp://')}")  # fmt: skip
    (home / "tmkms.toml").write_text(text)
    kms = KmsProcess(home / "tmkms.toml", tmp_path / "pykms.log")
    kms.start()
    try:
        link = accept(sim, kms)
        pub = bytes(link.pubkey().pub_key)
        # the imported state (a prevote at height 10, block unknown): a precommit for a block at height 10 is
        # refused (it cannot be shown to match the prevote); height 11 signs; height 9 is a regression
        refused = link.sign_vote(make_vote(10, 0, PRECOMMIT, b"A"))
        assert refused.error is not None and "imported state" in refused.error.description
        vote = make_vote(11, 0, PRECOMMIT, b"A")
        resp = link.sign_vote(vote)
        assert resp.error is None, resp.error
        assert verify(pub, vote_sign_bytes("cosmoshub-3", vote), bytes(resp.vote.signature))
        # tmkms's `sign_extensions = false` keeps its meaning: no extension signature
        assert bytes(resp.vote.extension_signature) == b""
        assert link.sign_vote(make_vote(9, 0, PREVOTE, b"A")).error is not None
        link.close()
    finally:
        assert kms.stop() == 0, kms.log_text()
        sim.close()


def _chattr(flag: str, path: Path) -> bool:
    import subprocess

    return subprocess.run(["chattr", flag, str(path)], capture_output=True, check=False).returncode == 0


@pytest.mark.parametrize("state_format", ["json", "slots"])
def test_unwritable_state_refuses_then_recovers(tmp_path: Path, state_format: str) -> None:
    """An immutable state (chattr +i: refused even to root): pykms refuses to sign, then signs once it can."""
    state_dir = tmp_path / "kms" / "state"
    with running_kms(tmp_path, state_format=state_format) as (kms, (sim,)):
        link = accept(sim, kms)
        assert link.sign_vote(make_vote(5, 0, PREVOTE, b"A")).error is None
        target = state_dir if state_format == "json" else state_dir / f"{CHAIN}_priv_validator_state.json"
        if not _chattr("+i", target):
            pytest.skip("chattr +i is not supported here")
        try:
            before = (state_dir / f"{CHAIN}_priv_validator_state.json").read_bytes()
            refused = link.sign_vote(make_vote(6, 0, PREVOTE, b"A"))
            assert refused.error is not None
            assert bytes(refused.vote.signature) == b""
            assert (state_dir / f"{CHAIN}_priv_validator_state.json").read_bytes() == before
        finally:
            _chattr("-i", target)
        ok = link.sign_vote(make_vote(6, 0, PREVOTE, b"A"))
        assert ok.error is None
        link.close()
    assert "state_not_durable" in kms.log_text()


def test_validator_disconnecting_mid_request(tmp_path: Path) -> None:
    """The node sends a request and drops the link before the reply: pykms reconnects, the state is intact, and
    the same request afterwards gets the signature pykms had made (nothing conflicting is ever signed)."""
    with running_kms(tmp_path) as (kms, (sim,)):
        link = accept(sim, kms)
        vote = make_vote(12, 0, PREVOTE, b"A", timestamp=(1_700_000_000, 0))
        req = codec.SignVoteRequest(vote=vote, chain_id=CHAIN)
        link.send_raw(codec.delimit(codec.encode_request(Dialect.V0_38, req)))
        link.close()
        relink = accept(sim, kms)
        again = relink.sign_vote(make_vote(12, 0, PREVOTE, b"A", timestamp=(1_700_000_000, 0)))
        assert again.error is None
        conflict = relink.sign_vote(make_vote(12, 0, PREVOTE, b"B", timestamp=(1_700_000_000, 0)))
        assert conflict.error is not None
        assert _state(tmp_path)["height"] == "12"
        relink.close()
