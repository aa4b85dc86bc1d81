"""secp256k1 consensus keys (tmkms softsign key_type = "account"): low-S, verified, the right PubKeyResponse case."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from hypothesis import given, settings
from hypothesis import strategies as st

from pykms.errors import KeyFileError
from pykms.harness.simulator import PRECOMMIT, PREVOTE, ValidatorSimulator, make_proposal, make_vote
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import proposal_sign_bytes, vote_extension_sign_bytes, vote_sign_bytes
from pykms.providers.secp256k1 import N, Secp256k1Signer, keygen_secp256k1, verify_secp256k1
from tests.e2e import KmsProcess, accept, write_home

#: SEC 2 v2 §2.4.1: the generator G of secp256k1 in compressed form, i.e. the public key of the scalar 1.
G_COMPRESSED = "0279BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798"

SIGNER = Secp256k1Signer(bytes(range(1, 33)))


def _independent_verify(pub: bytes, message: bytes, signature: bytes) -> bool:
    """cryptography's own check plus CometBFT's low-S rule, without pykms's helper."""
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), pub)
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return len(signature) == 64 and s <= N // 2


def test_public_key_of_scalar_one_is_the_generator() -> None:
    assert Secp256k1Signer((1).to_bytes(32, "big")).public_key().hex().upper() == G_COMPRESSED


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_signatures_are_low_s_and_verify(message: bytes) -> None:
    signature = SIGNER.sign(message)
    assert _independent_verify(SIGNER.public_key(), message, signature)
    # The high-S twin is the same ECDSA signature, and CometBFT (and pykms) reject it as malleable.
    r, s = signature[:32], int.from_bytes(signature[32:], "big")
    high = r + (N - s).to_bytes(32, "big")
    assert not verify_secp256k1(SIGNER.public_key(), message, high)
    assert not verify_secp256k1(SIGNER.public_key(), message + b"x", signature)


def test_bad_scalars_refused_without_the_key_in_the_message(tmp_path: Path) -> None:
    for scalar in (bytes(32), N.to_bytes(32, "big"), bytes(31)):
        with pytest.raises(KeyFileError) as info:
            Secp256k1Signer(scalar)
        assert scalar.hex() not in str(info.value)


def test_keygen_account_writes_a_0600_base64_scalar(tmp_path: Path) -> None:
    path = tmp_path / "account.key"
    pub = keygen_secp256k1(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Secp256k1Signer(base64.b64decode(path.read_bytes())).public_key() == pub


@pytest.mark.parametrize("dialect", [Dialect.V0_38, Dialect.V1_0])
def test_pykms_start_signs_with_an_account_key(tmp_path: Path, dialect: Dialect) -> None:
    """tmkms's softsign key_type = "account" alone on a chain: consensus messages signed with secp256k1."""
    chain = "secp-chain"
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=chain, dialect=dialect)
    addr = sim.listen()
    config = write_home(tmp_path / "kms", [addr], chain_id=chain, protocol_version=dialect.value)
    account = tmp_path / "kms" / "secrets" / "account.key"
    pub = keygen_secp256k1(account)
    text = config.read_text()
    text = text.replace('key_type = "consensus"', 'key_type = "account"')
    text = text.replace(str(tmp_path / "kms" / "secrets" / f"{chain}-consensus.key"), str(account))
    config.write_text(text)
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    try:
        link = accept(sim, kms)
        response = link.pubkey()
        assert response.key_type == "secp256k1" and bytes(response.pub_key) == pub
        for height in (1, 2):
            prop = make_proposal(height, 0, f"b{height}")
            resp = link.sign_proposal(prop)
            assert resp.error is None
            assert _independent_verify(pub, proposal_sign_bytes(chain, prop), bytes(resp.proposal.signature))
            for vote_type in (PREVOTE, PRECOMMIT):
                vote = make_vote(height, 0, vote_type, f"b{height}", extension=b"e" if vote_type == PRECOMMIT else b"")
                resp = link.sign_vote(vote)
                assert resp.error is None, resp.error
                assert _independent_verify(pub, vote_sign_bytes(chain, vote), bytes(resp.vote.signature))
                if vote_type == PRECOMMIT:
                    ext_sig = bytes(resp.vote.extension_signature)
                    assert _independent_verify(pub, vote_extension_sign_bytes(chain, vote), ext_sig)
        link.close()
    finally:
        kms.stop()
        sim.close()


def test_keys_show_prints_an_account_key_as_tmkms_formats_it(tmp_path: Path) -> None:
    import hashlib
    import subprocess
    import sys

    key = tmp_path / "account.key"
    key.write_bytes(base64.b64encode((1).to_bytes(32, "big")))
    key.chmod(0o600)
    config = tmp_path / "tmkms.toml"
    config.write_text(
        '[[chain]]\nid = "s-1"\nkey_format = { type = "bech32", account_key_prefix = "cosmospub", '
        'consensus_key_prefix = "cosmosvalconspub" }\n\n'
        f'[[providers.softsign]]\nchain_ids = ["s-1"]\nkey_type = "account"\npath = "{key}"\n'
    )
    out = subprocess.run([sys.executable, "-m", "pykms.cli.main", "keys", "show", "-c", str(config)],
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "consensus key: cosmospub1addwnpep" in out.stdout  # amino eb5ae98721 under the account prefix
    assert G_COMPRESSED in out.stdout
    address = hashlib.new("ripemd160", hashlib.sha256(bytes.fromhex(G_COMPRESSED)).digest()).hexdigest().upper()
    assert address in out.stdout
