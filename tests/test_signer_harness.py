"""The signer harness: tm-signer-harness's checks and exit codes, against honest and broken signers.

The harness runs as a real process (``python -m pykms.harness.signer_harness``, the console script's module)
listening on loopback; the signers of tests/broken_signers.py dial it over real sockets with pykms's
SecretConnection and codec. Exit codes are tm-signer-harness's (cometbft 13c1ef3d42^,
tools/tm-signer-harness/internal/test_harness.go); the TMHOME is its own test fixture
(internal/test_harness_test.go: keyFileContents, stateFileContents, genesis chain id).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import signal
import socket
import stat
from pathlib import Path

import pytest

from pykms.errors import HarnessError
from pykms.harness.conformance import EXIT, Harness, run_basic, run_full
from pykms.harness.signer_harness import main
from pykms.harness.simulator import PRECOMMIT, PREVOTE, ValidatorSimulator
from pykms.privval import codec
from pykms.privval.codec import Dialect
from tests.broken_signers import (
    FIXTURE_CHAIN_ID,
    FIXTURE_KEY_JSON,
    FIXTURE_PUB,
    FIXTURE_SEED,
    HarnessProcess,
    TestSigner,
    run_harness_against,
    write_tmhome,
)


@pytest.fixture
def tmhome(tmp_path: Path) -> Path:
    return write_tmhome(tmp_path / "tmhome")


def _run_args(tmhome: Path, *extra: str, addr: str = "tcp://127.0.0.1:0", retries: int = 100) -> list[str]:
    return ["run", "--addr", addr, "--tmhome", str(tmhome), "--accept-retries", str(retries), *extra]


def _signer(**kw: object) -> object:
    return lambda addr: TestSigner(addr, FIXTURE_SEED, **kw)  # type: ignore[arg-type]


# Passing runs -----------------------------------------------------------------------------------------------


def test_basic_run_passes_and_sends_tm_signer_harness_requests(tmhome: Path) -> None:
    code, out, signer = run_harness_against(_run_args(tmhome), _signer(chain_id=FIXTURE_CHAIN_ID))
    assert code == EXIT["ok"], out
    assert out.count("[pass]") == 4 and "[FAIL]" not in out
    # The requests are tm-signer-harness's (test vector V12): pubkey, proposal 100, prevote 101, precommit 101,
    # each signature followed by a pubkey request (test_harness.go asks again before verifying).
    names = [type(r).__name__ for r in signer.requests]
    assert names == ["PubKeyRequest", "SignProposalRequest", "PubKeyRequest", "SignVoteRequest", "PubKeyRequest",
                     "SignVoteRequest", "PubKeyRequest"]  # fmt: skip
    reqs = [r for r in signer.requests if not isinstance(r, codec.PubKeyRequest)]
    reqs.insert(0, signer.requests[0])
    assert reqs[0].chain_id == FIXTURE_CHAIN_ID
    block_hash = bytes.fromhex("d04b98f48e8f8bcc15c6ae5ac050801cd6dcfd428fb5f9e65c4e16e7807340fa")
    prop = reqs[1].proposal
    assert (prop.height, prop.round, prop.pol_round) == (100, 0, -1)
    assert prop.block_id.hash == block_hash == prop.block_id.part_set_header.hash
    assert prop.block_id.part_set_header.total == 1_000_000
    for req, vote_type in zip(reqs[2:], (PREVOTE, PRECOMMIT), strict=True):
        vote = req.vote
        assert (vote.type, vote.height, vote.round, vote.validator_index) == (vote_type, 101, 0, 0)
        assert vote.validator_address == bytes.fromhex("a2593c986c86ca323a339d7781cc04bb2fd15ac3")
        assert vote.block_id.hash == block_hash and req.chain_id == FIXTURE_CHAIN_ID


@pytest.mark.parametrize("version", ["v0.34", "v0.38", "v1.0"])
def test_full_suite_passes_against_an_honest_signer(tmhome: Path, version: str) -> None:
    dialect = Dialect.parse(version)
    args = _run_args(tmhome, "--suite", "full", "--protocol-version", version)
    code, out, signer = run_harness_against(args, _signer(chain_id=FIXTURE_CHAIN_ID, dialect=dialect))
    assert code == EXIT["ok"], out
    assert "[FAIL]" not in out
    assert "signer reconnects after the validator dropped the link" in out
    assert signer.connections == 2  # the harness dropped the link once and the signer came back
    if dialect is Dialect.V1_0:
        assert "[pass] v1.0 skip_extension_signing is obeyed" in out
        assert "[pass] v1.0 SignBytes with a conflicting vote's sign bytes is refused" in out
    if dialect.has_extensions:
        assert "[pass] extension signature on a non-nil precommit with an empty extension" in out


def test_go_style_single_dash_flags_and_unix_socket(tmp_path: Path, tmhome: Path) -> None:
    sock = tmp_path / "h.sock"
    args = ["run", "-addr", f"unix://{sock}", "-tmhome", str(tmhome), "-accept-retries", "100"]
    code, out, _ = run_harness_against(args, _signer())
    assert code == EXIT["ok"], out
    assert not sock.exists()  # the harness removes its socket


# Broken signers ---------------------------------------------------------------------------------------------


def test_wrong_key_is_exit_code_8(tmhome: Path) -> None:
    code, out, _ = run_harness_against(_run_args(tmhome), _signer(wrong_key=True))
    assert code == EXIT["pubkey"] == 8, out
    assert "[FAIL] public key matches priv_validator_key.json" in out
    assert FIXTURE_PUB.hex() in out


def test_pre_v1_pubkey_shape_to_a_v1_node_is_exit_code_8(tmhome: Path) -> None:
    signer = _signer(dialect=Dialect.V1_0, pubkey_dialect=Dialect.V0_38)
    code, out, _ = run_harness_against(_run_args(tmhome, "--protocol-version", "v1.0"), signer)
    assert code == EXIT["pubkey"], out
    assert "the signer sent no key (a pre-v1.0 PubKeyResponse?)" in out


def test_altered_timestamp_is_exit_code_9(tmhome: Path) -> None:
    code, out, signer = run_harness_against(_run_args(tmhome), _signer(alter_timestamp=True))
    assert code == EXIT["proposal"] == 9, out
    assert "[FAIL] proposal at height 100" in out and "does not verify over the sign bytes of the request" in out
    # stopped at the first failure, as tm-signer-harness: pubkey, proposal, pubkey (asked again before verifying)
    assert len(signer.requests) == 3


def test_double_signer_passes_basic_but_fails_full_with_exit_code_10(tmhome: Path) -> None:
    code, out, _ = run_harness_against(_run_args(tmhome), _signer(no_guard=True))
    assert code == EXIT["ok"], out  # the basic run cannot see a missing guard
    code, out, _ = run_harness_against(_run_args(tmhome, "--suite", "full"), _signer(no_guard=True))
    assert code == EXIT["vote"] == 10, out
    assert "[FAIL] conflicting prevote (block B) at the same height/round/step is refused: SIGNED" in out
    assert "[FAIL] height regression is refused" in out
    # the run went on after the first failure and reported the rest
    assert "[FAIL] double-sign state kept across the reconnect" in out
    assert "check(s) failed, the first: conflicting prevote" in out


def test_signer_that_never_connects_is_exit_code_2(tmhome: Path) -> None:
    code, out, _ = run_harness_against(_run_args(tmhome, retries=3))
    assert code == EXIT["no_signer"] == 2, out
    assert "no signer connected after 3 accept attempts" in out


def test_zero_accept_retries_is_exit_code_2_at_once(tmhome: Path) -> None:
    assert main(_run_args(tmhome, retries=0)) == EXIT["no_signer"]


def test_handshake_garbage_is_not_a_signer(tmhome: Path) -> None:
    code, out, signer = run_harness_against(_run_args(tmhome, retries=10), _signer(garbage_handshake=True))
    assert code == EXIT["no_signer"], out
    assert "failed the handshake" in out
    assert signer.connections >= 1


def test_refused_pubkey_is_exit_code_7(tmhome: Path) -> None:
    # TestPublicKey returns the client's error as is, and Shutdown maps a non-harness error to ErrOther (7).
    code, out, _ = run_harness_against(_run_args(tmhome), _signer(refuse_pubkey=True))
    assert code == EXIT["other"] == 7, out
    assert "no key for you" in out


@pytest.mark.slow
def test_signer_that_never_answers_a_proposal_is_exit_code_9(tmhome: Path) -> None:
    code, out, _ = run_harness_against(_run_args(tmhome), _signer(stall_on="proposal"))
    assert code == EXIT["proposal"], out
    assert "did not answer within 3 s" in out


# Parameters, files, listener ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["run", "--protocol-version", "v9"], 1),
        (["run", "--no-such-flag"], 1),
        (["frobnicate"], 1),
        ([], 1),
        (["run", "--accept-retries", "many"], 1),
    ],
)
def test_bad_parameters_are_exit_code_1(argv: list[str], code: int) -> None:
    assert main(argv) == code


_KEY = json.loads(FIXTURE_KEY_JSON)


def _key_with(priv: bytes, key_type: str = "tendermint/PrivKeyEd25519") -> str:
    doc = json.loads(json.dumps(_KEY))
    doc["priv_key"] = {"type": key_type, "value": base64.b64encode(priv).decode()}
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("files", "code", "message"),
    [
        ({"key": None}, 1, "priv_validator_key.json: No such file"),
        ({"key": "{not json"}, 1, "not JSON"),
        ({"key": _key_with(FIXTURE_SEED + bytes(32))}, 1, "does not match its seed"),
        ({"key": _key_with(FIXTURE_SEED)}, 1, "32 bytes"),
        ({"key": _key_with(FIXTURE_SEED + FIXTURE_PUB, "tendermint/PrivKeySecp256k1")}, 1, "only tendermint/Priv"),
        ({"state": None}, 1, "priv_validator_state.json: No such file"),
        ({"state": '{"height": 5, "round": 0, "step": 0}'}, 1, "height"),
        ({"genesis": None}, 3, "genesis.json: No such file"),
        ({"genesis": '{"chain_id": ""}'}, 3, "non-empty chain_id"),
        ({"genesis": json.dumps({"chain_id": "c" * 51})}, 3, "too long"),
        ({"genesis": "[]"}, 3, "genesis.json"),
        ({"key": None, "genesis": None}, 1, "priv_validator_key.json"),  # key first, as LoadFilePV runs first
    ],
)
def test_tmhome_load_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str | None], code: int, message: str
) -> None:
    home = write_tmhome(tmp_path / "home", **files)  # type: ignore[arg-type]
    assert main(_run_args(home, retries=1)) == code
    err = capsys.readouterr().err
    assert message in err
    assert base64.b64encode(FIXTURE_SEED).decode()[:16] not in err  # the key never appears in an error


def test_address_in_use_is_exit_code_4(tmhome: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(_run_args(tmhome, addr=f"tcp://127.0.0.1:{port}", retries=1)) == EXIT["create_listener"]
    assert "cannot listen" in capsys.readouterr().err


@pytest.mark.parametrize("addr", ["udp://127.0.0.1:5000", "tcp://127.0.0.1", "unix://"])
def test_unsupported_address_is_exit_code_4(tmhome: Path, addr: str) -> None:
    # tm-signer-harness: net.Listen fails for these, and NewTestHarness reports ErrFailedToCreateListener.
    assert main(_run_args(tmhome, addr=addr, retries=1)) == EXIT["create_listener"]


def test_unix_path_that_is_a_file_is_refused_not_removed(tmp_path: Path, tmhome: Path) -> None:
    victim = tmp_path / "important.txt"
    victim.write_text("keep me")
    assert main(_run_args(tmhome, addr=f"unix://{victim}", retries=1)) == EXIT["create_listener"]
    assert victim.read_text() == "keep me"


def test_listener_failing_while_accepting_is_exit_code_5(tmhome: Path) -> None:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=FIXTURE_CHAIN_ID)
    sim.listen()
    assert sim._sock is not None
    sim._sock.close()  # the listening socket dies under the harness (EBADF on accept)
    harness = Harness(sim, FIXTURE_PUB, accept_retries=3, out=io.StringIO())
    with pytest.raises(HarnessError) as info:
        run_basic(harness)
    assert info.value.exit_code == EXIT["start_listener"] == 5
    sim.close()


@pytest.mark.parametrize("ignored", [False, True], ids=["default", "started-with-SIGINT-ignored"])
def test_sigint_is_exit_code_6(tmhome: Path, ignored: bool) -> None:
    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    harness = HarnessProcess(_run_args(tmhome, retries=600), preexec_fn=ignore_sigint if ignored else None)
    harness.wait_listening()
    harness.proc.send_signal(signal.SIGINT)
    assert harness.wait(20) == EXIT["interrupted"] == 6, harness.output
    assert "interrupted" in harness.output


# extract_key ----------------------------------------------------------------------------------------------


def test_extract_key_writes_the_raw_seed_0600(tmp_path: Path, tmhome: Path) -> None:
    out = tmp_path / "signing.key"
    assert main(["extract_key", "-tmhome", str(tmhome), "-output", str(out)]) == 0
    assert out.read_bytes() == FIXTURE_SEED  # raw 32 bytes, not base64 (main.go: pkb[:32])
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # the seed is the V11 fixture's: its public key is the one in the key file
    from nacl.signing import SigningKey

    assert bytes(SigningKey(out.read_bytes()).verify_key) == FIXTURE_PUB


def test_extract_key_refuses_to_overwrite_and_needs_no_genesis(tmp_path: Path) -> None:
    home = write_tmhome(tmp_path / "home", genesis=None)
    out = tmp_path / "signing.key"
    out.write_bytes(b"precious")
    assert main(["extract_key", "--tmhome", str(home), "--output", str(out)]) == EXIT["params"]
    assert out.read_bytes() == b"precious"
    out.unlink()
    assert main(["extract_key", "--tmhome", str(home), "--output", str(out)]) == 0
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(FIXTURE_SEED).digest()


def test_extract_key_without_state_is_exit_code_1(tmp_path: Path) -> None:
    home = write_tmhome(tmp_path / "home", state=None)
    assert main(["extract_key", "--tmhome", str(home), "--output", str(tmp_path / "k")]) == 1
    assert not (tmp_path / "k").exists()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert "pykms-signer-harness" in capsys.readouterr().out


# The same suites in-process (Harness + run_full), for the branches a subprocess hides from coverage ----------


def _in_process(dialect: Dialect, retries: int = 50, **signer_kw: object) -> tuple[int, str, TestSigner]:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=FIXTURE_CHAIN_ID, dialect=dialect)
    signer = TestSigner(sim.listen(), FIXTURE_SEED, dialect=dialect, **signer_kw)  # type: ignore[arg-type]
    signer.start()
    out = io.StringIO()
    harness = Harness(sim, FIXTURE_PUB, accept_retries=retries, out=out)
    code = 0
    try:
        harness.accept()
        run_full(harness, dialect)
    except HarnessError as exc:
        code = exc.exit_code
    finally:
        if harness.link is not None:
            harness.link.close()
        signer.stop()
        sim.close()
    return code, out.getvalue(), signer


@pytest.mark.parametrize("dialect", list(Dialect), ids=[d.value for d in Dialect])
def test_in_process_full_suite_honest(dialect: Dialect) -> None:
    code, out, _ = _in_process(dialect, chain_id=FIXTURE_CHAIN_ID)
    assert code == 0, out
    assert "[pass] timestamp-only difference: a valid signature for the same block: stored (FilePV) timestamp" in out


def test_in_process_tmkms_style_signer_passes() -> None:
    # tmkms signs a new timestamp for the same block, and refuses regressions and wrong chain ids by closing the
    # link and dialling again (docs/protocol.md §2.8): both are safe, and the harness accepts them.
    code, out, signer = _in_process(
        Dialect.V0_38, chain_id=FIXTURE_CHAIN_ID, resign_new_timestamp=True, drop_on_refusal=True
    )
    assert code == 0, out
    assert "timestamp-only difference: a valid signature for the same block: new timestamp" in out
    assert "[pass] height regression is refused: refused by closing the connection" in out
    assert "[pass] a vote for another chain id is refused: refused by closing the connection" in out
    assert signer.connections == 1 + 5 + 1  # the first, one per hang-up (4 regressions, wrong chain), the drop


def test_in_process_double_signer_every_refusal_reported() -> None:
    code, out, _ = _in_process(Dialect.V1_0, no_guard=True)
    assert code == EXIT["vote"], out
    failed = [line for line in out.splitlines() if line.startswith("[FAIL]")]
    for name in (
        "conflicting prevote (block B)",
        "conflicting nil prevote",
        "conflicting proposal (block Q)",
        "height regression",
        "round regression",
        "step regression",
        "proposal regression",
        "v1.0 SignBytes with a conflicting vote's sign bytes is refused: SIGNED",
        "a vote for another chain id is refused",
        "double-sign state kept across the reconnect",
    ):
        assert any(name in line for line in failed), (name, out)


@pytest.mark.parametrize(
    ("signer_kw", "code", "line"),
    [
        ({"wrong_key": True}, 8, "[FAIL] public key matches"),
        ({"alter_timestamp": True}, 9, "[FAIL] proposal at height 100"),
        ({"refuse_pubkey": True}, 7, "[FAIL] public key: the signer refused"),
        ({"chain_id": FIXTURE_CHAIN_ID, "max_connections": 1}, 2, "[FAIL] signer reconnects"),
        # a later fatal failure does not hide the first one: the exit code stays the double sign's
        ({"no_guard": True, "max_connections": 1}, 10, "[FAIL] signer reconnects"),
    ],
)
def test_in_process_broken_signers(signer_kw: dict[str, object], code: int, line: str) -> None:
    got, out, _ = _in_process(Dialect.V0_38, retries=5, **signer_kw)
    assert got == code, out
    assert line in out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_main_run_and_bench_in_process(tmhome: Path, capsys: pytest.CaptureFixture[str]) -> None:
    addr = f"tcp://127.0.0.1:{_free_port()}"
    signer = TestSigner(addr, FIXTURE_SEED, chain_id=FIXTURE_CHAIN_ID).start()  # dials until the harness listens
    try:
        assert main(["run", "--addr", addr, "--tmhome", str(tmhome), "--suite", "full"]) == 0
        assert "SUCCESS: all" in capsys.readouterr().out
        argv = ["bench", "--addr", addr, "-n", "12", "--warmup", "3", "--chain-id", FIXTURE_CHAIN_ID,
                "--extensions", "--floor-dir", str(tmhome)]  # fmt: skip
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert "requests        12" in out and "signatures/s" in out
    finally:
        signer.stop()
    assert main(["bench", "--addr", addr, "-n", "0"]) == EXIT["params"]
