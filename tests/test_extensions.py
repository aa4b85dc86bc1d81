"""protocol_version x sign_extensions: tmkms v0.15's semantics, as a table and against a real ``pykms start``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pykms.errors import ConfigError
from pykms.extensions import plan_extensions
from pykms.harness.simulator import PRECOMMIT, PREVOTE, ValidatorSimulator, make_proposal, make_vote
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import proposal_sign_bytes, vote_extension_sign_bytes, vote_sign_bytes
from tests.e2e import KmsProcess, accept, verify, write_home

CHAIN = "ve-chain"

# (protocol_version, sign_extensions) -> (wire dialect, policy passed to the handler); None = by dialect.
TABLE = {
    ("v0.34", None): ("v0.34", None),
    ("v0.34", True): ("v0.38", True),
    ("v0.34", False): ("v0.34", False),
    ("v0.37", None): ("v0.37", None),
    ("v0.37", True): ("v0.38", True),
    ("v0.37", False): ("v0.37", False),
    ("v0.38", None): ("v0.38", None),
    ("v0.38", True): ("v0.38", True),
    ("v0.38", False): ("v0.38", False),
    ("v1.0", None): ("v1.0", None),
    ("v1.0", True): ("v1.0", True),
    ("v1.0", False): ("v1.0", False),
}


@pytest.mark.parametrize(("version", "flag"), list(TABLE))
def test_every_combination(version: str, flag: bool | None) -> None:
    plan = plan_extensions(version, flag)
    assert (plan.dialect, plan.sign_extensions) == TABLE[(version, flag)]
    # A protocol_version that tmkms v0.15 ignores is overridden loudly, never silently.
    assert bool(plan.note) == (plan.dialect != version)
    # A key that cannot sign extensions (Ledger) is refused exactly when extensions would be signed.
    signs = plan.sign_extensions is not False and plan.dialect not in ("v0.34", "v0.37")
    assert signs == (flag is True or (flag is None and version in ("v0.38", "v1.0")))
    if not signs:
        assert plan_extensions(version, flag, signs_extensions=False) == plan
    else:
        with pytest.raises(ConfigError) as info:
            plan_extensions(version, flag, signs_extensions=False, chain_id=CHAIN, file="/etc/kms/tmkms.toml")
        text = str(info.value)
        assert "/etc/kms/tmkms.toml" in text and "sign_extensions = false" in text and CHAIN in text


def test_v034_with_sign_extensions_commits_a_vote_extension_chain(tmp_path: Path) -> None:
    """What `tmkms init` writes (protocol_version = "v0.34") plus sign_extensions = true, against a v0.38 node
    with vote extensions enabled from height 1: every non-nil precommit carries a verified extension signature,
    which is what the node needs to count it (CometBFT types/vote.go VerifyVoteAndExtension)."""
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN, dialect=Dialect.V0_38)
    addr = sim.listen()
    config = write_home(tmp_path / "kms", [addr], chain_id=CHAIN, protocol_version="v0.34")
    text = config.read_text().replace('state_format = "json"', 'state_format = "json"\nsign_extensions = true')
    assert "sign_extensions = true" in text
    config.write_text(text)
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    committed = []
    try:
        link = accept(sim, kms)
        pub = bytes(link.pubkey().pub_key)
        for height in range(1, 8):
            prop = make_proposal(height, 0, f"b{height}")
            resp = link.sign_proposal(prop)
            assert resp.error is None and verify(pub, proposal_sign_bytes(CHAIN, prop), bytes(resp.proposal.signature))
            prevote = make_vote(height, 0, PREVOTE, f"b{height}")
            resp = link.sign_vote(prevote)
            assert resp.error is None and bytes(resp.vote.extension_signature) == b""
            precommit = make_vote(height, 0, PRECOMMIT, f"b{height}", extension=f"oracle-{height}".encode())
            resp = link.sign_vote(precommit)
            assert resp.error is None, resp.error
            ok_vote = verify(pub, vote_sign_bytes(CHAIN, precommit), bytes(resp.vote.signature))
            ok_ext = verify(pub, vote_extension_sign_bytes(CHAIN, precommit), bytes(resp.vote.extension_signature))
            if ok_vote and ok_ext:  # the node's rule for a non-nil precommit with extensions enabled
                committed.append(height)
        link.close()
    finally:
        kms.stop()
        sim.close()
    assert committed == list(range(1, 8)), kms.log_text()
    lines = [json.loads(line) for line in kms.log_text().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "protocol_version_overridden" for line in lines)
    signed = [line for line in lines if line.get("event") == "precommit_signed"]
    assert len(signed) == 7 and all(line["extension"] is True for line in signed)


def test_sentries_of_one_chain_with_different_protocol_versions(tmp_path: Path) -> None:
    """The extension policy is the chain's: a v0.34 sentry listed after a v0.38 one must not switch the v0.38
    sentry's extension signatures off."""
    new = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN, dialect=Dialect.V0_38)
    old = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN, dialect=Dialect.V0_34)
    addrs = [new.listen(), old.listen()]
    config = write_home(tmp_path / "kms", addrs, chain_id=CHAIN, protocol_version="v0.38")
    head, sep, tail = config.read_text().rpartition('protocol_version = "v0.38"')
    config.write_text(head + 'protocol_version = "v0.34"' + tail)
    assert config.read_text().count('protocol_version = "v0.34"') == 1 and sep
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    try:
        link_new, link_old = accept(new, kms), accept(old, kms)
        pub = bytes(link_new.pubkey().pub_key)
        vote = make_vote(1, 0, PRECOMMIT, "b1", extension=b"x")
        resp = link_new.sign_vote(vote)
        assert resp.error is None
        assert verify(pub, vote_extension_sign_bytes(CHAIN, vote), bytes(resp.vote.extension_signature))
        resp = link_old.sign_vote(make_vote(2, 0, PRECOMMIT, "b2"))
        assert resp.error is None and bytes(resp.vote.extension_signature) == b""
        link_new.close()
        link_old.close()
    finally:
        kms.stop()
        new.close()
        old.close()
