"""Ledger provider through the unmodified ledgerblue TCP transport against our app simulator."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from pykms.errors import ConfigError, FatalProviderError, SigningRefused, TransientProviderError
from pykms.extensions import plan_extensions
from pykms.guard.backend import FileGuard
from pykms.guard.state import SignState
from pykms.guard.store import JsonStateStore, create_state_file
from pykms.harness.ledger_sim import SW, LedgerApp, LedgerSimServer, parse_sign_bytes
from pykms.harness.simulator import PRECOMMIT, PREVOTE, make_proposal, make_vote
from pykms.privval.signbytes import proposal_sign_bytes, vote_sign_bytes
from pykms.providers.ledger import (
    LedgerMessageTooLong,
    LedgerRefused,
    LedgerSigner,
    error_for_status,
)

CHAIN = "ledger-1"


@pytest.fixture
def sim() -> Iterator[LedgerSimServer]:
    server = LedgerSimServer(LedgerApp(SigningKey(bytes(range(32))))).start()
    yield server
    server.stop()


def _signer(sim: LedgerSimServer) -> LedgerSigner:
    return LedgerSigner("tcp", f"127.0.0.1:{sim.port}")


def test_pubkey_version_and_signature(sim: LedgerSimServer) -> None:
    signer = _signer(sim)
    try:
        assert signer.public_key() == bytes(SigningKey(bytes(range(32))).verify_key)
        assert signer.version() == (0, 2, 4, 0)
        message = vote_sign_bytes(CHAIN, make_vote(5, 0, PREVOTE, b"A"))
        signature = signer.sign(message)  # verified inside against the public key
        assert len(signature) == 64
        assert sim.app.watermark == (5, 0, 2)
    finally:
        signer.close()


def test_watermark_refuses_what_is_not_after_it(sim: LedgerSimServer) -> None:
    signer = _signer(sim)
    try:
        signer.sign(vote_sign_bytes(CHAIN, make_vote(10, 1, PRECOMMIT, b"A")))
        for vote in (
            make_vote(10, 1, PRECOMMIT, b"A"),
            make_vote(10, 1, PREVOTE, b"A"),
            make_vote(9, 5, PREVOTE, b"A"),
        ):
            with pytest.raises(LedgerRefused, match="watermark"):
                signer.sign(vote_sign_bytes(CHAIN, vote))
        signer.sign(vote_sign_bytes(CHAIN, make_vote(10, 2, PREVOTE, b"A")))
    finally:
        signer.close()


def test_first_signature_needs_approval(sim: LedgerSimServer) -> None:
    sim.app.button = "reject"
    signer = _signer(sim)
    try:
        with pytest.raises(FatalProviderError, match="pykms ledger init"):
            signer.sign(vote_sign_bytes(CHAIN, make_vote(3, 0, PREVOTE, b"A")))
        assert sim.app.watermark is None and sim.app.signatures == 0
        sim.app.button = "accept"
        signer.sign(vote_sign_bytes(CHAIN, make_vote(3, 0, PREVOTE, b"A")))
        assert sim.app.signatures == 1
    finally:
        signer.close()


def test_over_128_bytes_is_refused_before_anything_is_sent(sim: LedgerSimServer) -> None:
    signer = _signer(sim)
    try:
        long_chain = "a-chain-id-long-enough-to-overflow-the-app"
        message = proposal_sign_bytes(long_chain, make_proposal(7, 1, b"A"))
        assert len(message) > 128
        before = sim.app.apdus
        with pytest.raises(LedgerMessageTooLong, match="128-byte limit"):
            signer.sign(message)
        assert sim.app.apdus == before
    finally:
        signer.close()


def test_each_status_word_of_the_app() -> None:
    """The simulator core answers every status word; the provider maps each to an error that says what to do."""
    app = LedgerApp(SigningKey(bytes(32)))
    vote = vote_sign_bytes(CHAIN, make_vote(4, 0, PREVOTE, b"A"))
    assert app.process(bytes([0x55, 0x00, 0, 0, 0]))[1] == SW.CLA_NOT_SUPPORTED
    assert app.process(bytes([0x56, 0x09, 0, 0, 0]))[1] == SW.INS_NOT_SUPPORTED
    assert app.process(bytes([0x56, 0x02, 0, 1, 3]) + b"abc")[1] == SW.WRONG_P1P2
    assert app.process(bytes([0x56, 0x02, 1, 1, 3]) + b"abc")[1] == SW.INVALID_DATA
    assert app.process(bytes([0x56, 0x02, 1, 1, 5]) + b"abc")[1] == SW.WRONG_LENGTH
    # chunked: two chunks in order sign; out of order is refused
    half = len(vote) // 2
    assert app.process(bytes([0x56, 0x02, 1, 2, half]) + vote[:half]) == (b"", SW.OK)
    sig, sw = app.process(bytes([0x56, 0x02, 2, 2, len(vote) - half]) + vote[half:])
    assert sw == SW.OK and len(sig) == 64
    assert app.process(bytes([0x56, 0x02, 2, 2, 3]) + b"abc")[1] == SW.WRONG_P1P2
    assert app.process(bytes([0x56, 0x02, 1, 1, len(vote)]) + vote)[1] == SW.CONDITIONS_NOT_SATISFIED
    too_long = bytes(129)
    assert app.process(bytes([0x56, 0x02, 1, 2, 100]) + too_long[:100])[1] == SW.OK
    assert app.process(bytes([0x56, 0x02, 2, 2, 29]) + too_long[100:])[1] == SW.WRONG_LENGTH
    fresh = LedgerApp(SigningKey(bytes(32)), button="reject")
    assert fresh.process(bytes([0x56, 0x02, 1, 1, len(vote)]) + vote)[1] == SW.COMMAND_NOT_ALLOWED
    expected = {
        0x6985: (LedgerRefused, "watermark"),
        0x6986: (FatalProviderError, "not initialised"),
        0x6984: (LedgerRefused, "invalid data"),
        0x6700: (LedgerMessageTooLong, "128"),
        0x6B00: (TransientProviderError, "out of order"),
        0x6D00: (FatalProviderError, "Tendermint validator app"),
        0x6E00: (FatalProviderError, "Tendermint validator app"),
        0x6982: (TransientProviderError, "locked"),
        0x6F00: (TransientProviderError, "unexpected"),
    }
    for sw, (cls, text) in expected.items():
        err = error_for_status(sw)
        assert isinstance(err, cls) and text in str(err) and f"0x{sw:04x}" in str(err)


def test_parse_sign_bytes_reads_type_height_round() -> None:
    assert parse_sign_bytes(vote_sign_bytes(CHAIN, make_vote(12, 3, PRECOMMIT, b"x"))) == (2, 12, 3)
    assert parse_sign_bytes(proposal_sign_bytes("c", make_proposal(12, 0, b"x"))) == (32, 12, 0)
    with pytest.raises(ValueError):
        parse_sign_bytes(b"\x05garbage")


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 2**63 - 1),
    st.integers(0, 2**31 - 1),
    st.sampled_from([PREVOTE, PRECOMMIT, 32]),
    st.text(max_size=50),
    st.binary(max_size=40),
)
def test_parse_sign_bytes_agrees_with_the_sign_bytes_builders(
    height: int, round_: int, kind: int, chain: str, junk: bytes
) -> None:
    """Whatever the chain id and block, the app reads the height and round pykms signs (the watermark depends on
    it), a negative round or non-positive height is refused, and arbitrary bytes only ever raise ValueError."""
    if kind == 32:
        message = proposal_sign_bytes(chain, make_proposal(height, round_, b"b"))
    else:
        message = vote_sign_bytes(chain, make_vote(height, round_, kind, b"b"))
    assert parse_sign_bytes(message) == (kind, height, round_)
    with pytest.raises(ValueError):
        parse_sign_bytes(vote_sign_bytes(chain, make_vote(height, -1 - round_ % 5, kind if kind != 32 else PREVOTE)))
    with pytest.raises(ValueError):
        parse_sign_bytes(vote_sign_bytes(chain, make_vote(-height, round_, PREVOTE)))
    with contextlib.suppress(ValueError):
        parse_sign_bytes(junk)


def test_a_refusal_never_advances_pykms_state(sim: LedgerSimServer, tmp_path: Path) -> None:
    """The guard's critical section: the device refuses, nothing is saved."""
    path = tmp_path / "state.json"
    create_state_file(path, SignState.initial())
    guard = FileGuard(CHAIN, JsonStateStore(path))
    signer = _signer(sim)
    try:
        sim.app.watermark = (50, 0, 3)  # the device already signed further than pykms knows
        message = vote_sign_bytes(CHAIN, make_vote(20, 0, PREVOTE, b"A"))
        with pytest.raises(SigningRefused):
            guard.check_and_sign(20, 0, 2, message, signer.sign)
        assert guard.state == SignState.initial()
        guard.close()
        assert JsonStateStore(path).load() == SignState.initial()
    finally:
        signer.close()


def test_extensions_need_them_disabled() -> None:
    for dialect in ("v0.34", "v0.37"):
        plan = plan_extensions(dialect, None, signs_extensions=False)
        assert plan.sign_extensions is None and plan.dialect == dialect  # a dialect without extensions
    for dialect in ("v0.38", "v1.0"):
        with pytest.raises(ConfigError, match="sign_extensions = false"):
            plan_extensions(dialect, None, signs_extensions=False)
        assert plan_extensions(dialect, False, signs_extensions=False).sign_extensions is False


def _tmhome(root: Path, key: SigningKey) -> Path:
    home = root / "tmhome"
    (home / "config").mkdir(parents=True)
    (home / "data").mkdir()
    pub = bytes(key.verify_key)
    import hashlib

    (home / "config" / "priv_validator_key.json").write_text(json.dumps({
        "address": hashlib.sha256(pub).digest()[:20].hex().upper(),
        "pub_key": {"type": "tendermint/PubKeyEd25519", "value": base64.b64encode(pub).decode()},
        "priv_key": {"type": "tendermint/PrivKeyEd25519", "value": base64.b64encode(bytes(key._seed) + pub).decode()},
    }))  # fmt: skip
    (home / "config" / "genesis.json").write_text(json.dumps({"chain_id": CHAIN}))
    (home / "data" / "priv_validator_state.json").write_text('{"height": "0", "round": 0, "step": 0}')
    return home


@pytest.mark.slow
@pytest.mark.parametrize(("dialect", "ext", "ok"), [
    ("v0.34", "", True),  # tmkms's ledgertm template: no extensions asked for
    ("v0.38", "sign_extensions = false", True),  # tmkms's spelling, on the [[chain]]
    ("v0.38", "extensions_disabled = true", True),  # pykms's spelling, on the provider
    ("v0.38", "", False),  # v0.38 signs extensions (as FilePV): the Ledger cannot
    ("v0.34", "sign_extensions = true", False),  # asks for extensions: the Ledger cannot
])  # fmt: skip
def test_pykms_start_with_a_ledger_passes_the_signer_harness(
    sim: LedgerSimServer, tmp_path: Path, dialect: str, ext: str, ok: bool
) -> None:
    from pykms.keyfiles import write_secret_file

    key = sim.app.key
    home = _tmhome(tmp_path, key)
    state = tmp_path / "state.json"
    create_state_file(state, SignState.initial())
    identity = tmp_path / "identity.key"
    write_secret_file(identity, base64.b64encode(os.urandom(32)))
    port_probe = __import__("socket").socket()
    port_probe.bind(("127.0.0.1", 0))
    port = port_probe.getsockname()[1]
    port_probe.close()
    config = tmp_path / "tmkms.toml"
    config.write_text(
        f'[[chain]]\nid = "{CHAIN}"\nkey_format = {{ type = "hex" }}\nstate_file = "{state}"\n'
        f"{ext if ext.startswith('sign_') else ''}\n\n"
        f'[[providers.ledgertm]]\nchain_ids = ["{CHAIN}"]\ntransport = "tcp"\naddr = "127.0.0.1:{sim.port}"\n'
        f"{ext if ext.startswith('extensions_') else ''}\n\n"
        f'[[validator]]\nchain_id = "{CHAIN}"\naddr = "tcp://127.0.0.1:{port}"\nsecret_key = "{identity}"\n'
        f'protocol_version = "{dialect}"\n'
    )
    kms = subprocess.Popen([sys.executable, "-m", "pykms.cli.main", "start", "-c", str(config)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        if not ok:
            out, _ = kms.communicate(timeout=20)
            assert kms.returncode == 3
            assert b"sign_extensions = false" in out and str(config).encode() in out, out
            return
        harness = subprocess.run(
            [sys.executable, "-m", "pykms.harness.signer_harness", "run", "--addr", f"tcp://127.0.0.1:{port}",
             "--tmhome", str(home), "--protocol-version", dialect],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert harness.returncode == 0, harness.stdout + harness.stderr
        assert sim.app.signatures == 3  # proposal, prevote, precommit: all through the device
    finally:
        if kms.poll() is None:
            kms.terminate()
            kms.wait(timeout=15)


def test_cli_pubkey_and_init(sim: LedgerSimServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pykms ledger pubkey` prints the app's key; `ledger init` moves its watermark, which then refuses to go
    back; a chain no Ledger serves is a config error naming the file."""
    from pykms.cli.main import main as pykms_main

    config = tmp_path / "tmkms.toml"
    config.write_text(
        f'[[chain]]\nid = "{CHAIN}"\nkey_format = {{ type = "hex" }}\nstate_file = "{tmp_path / "state.json"}"\n\n'
        f'[[providers.ledgertm]]\nchain_ids = ["{CHAIN}"]\ntransport = "tcp"\naddr = "127.0.0.1:{sim.port}"\n'
    )
    assert pykms_main(["ledger", "pubkey", "-c", str(config)]) == 0
    assert bytes(sim.app.key.verify_key).hex().upper() in capsys.readouterr().out
    assert pykms_main(["ledger", "init", "-c", str(config), "-H", "100", "-r", "2"]) == 0
    assert sim.app.watermark == (100, 2, 1)
    assert pykms_main(["ledger", "init", "-c", str(config), "-H", "99"]) == 8  # refused
    assert "watermark" in capsys.readouterr().err
    assert sim.app.watermark == (100, 2, 1)
    assert pykms_main(["ledger", "init", "-c", str(config), "-H", "101", "--chain", "other"]) == 3
    assert str(config) in capsys.readouterr().err


def test_sim_refuses_a_bad_seed_file(tmp_path: Path) -> None:
    """A seed file that is not base64 of 32 bytes, or that others can read, stops the simulator with a message
    naming the file (and, for the mode, the chmod that fixes it), not a traceback."""
    from pykms.harness.ledger_sim import main as sim_main

    seed = tmp_path / "seed.b64"
    seed.write_text("not base64!!\n")
    seed.chmod(0o600)
    with pytest.raises(SystemExit, match="expected base64 of a 32-byte seed") as exc:
        sim_main(["--seed-file", str(seed)])
    assert str(seed) in str(exc.value)
    seed.write_text(base64.b64encode(bytes(32)).decode())
    seed.chmod(0o644)
    with pytest.raises(SystemExit, match="chmod 600"):
        sim_main(["--seed-file", str(seed)])
