"""Celestia's SignRawBytes request (privval Message field 9 on the v0.34-v0.38 wire): refused with an error reply
and one log line; the connection and the process keep serving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pykms.harness.simulator import PRECOMMIT, ValidatorSimulator, make_vote
from pykms.privval import codec
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import vote_sign_bytes
from tests.e2e import KmsProcess, accept, verify, write_home

CHAIN = "celestia-test"


def test_wire_format_is_celestia_cores() -> None:
    """Field numbers from tmkms v0.15 src/proto/privval/celestia.rs (Message 9/10; chain_id 1, raw_bytes 2,
    unique_id 3; signature 1, error 2)."""
    req = codec.SignRawBytesRequest(chain_id="c", raw_bytes=b"\x01\x02", unique_id="u")
    body = codec.encode_request(Dialect.V0_38, req)
    assert body == bytes.fromhex("4a0a") + b"\x0a\x01c" + b"\x12\x02\x01\x02" + b"\x1a\x01u"
    assert codec.decode_request(Dialect.V0_38, body) == req
    reply = codec.encode_error(Dialect.V0_38, req, 0, "no")
    assert reply[:1] == b"\x52"  # Message field 10, length-delimited
    decoded = codec.decode_response(Dialect.V0_38, reply)
    assert decoded.error is not None and decoded.error.description == "no" and decoded.signature == b""
    # In v1.0, field 9 is CometBFT's own SignBytesRequest, a different message.
    assert isinstance(codec.decode_request(Dialect.V1_0, bytes.fromhex("4a03") + b"\x0a\x01c"), codec.SignBytesRequest)


@pytest.mark.parametrize("version", ["v0.34", "v0.38"])
def test_refused_and_the_connection_keeps_serving(tmp_path: Path, version: str) -> None:
    sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN, dialect=Dialect.parse(version))
    config = write_home(tmp_path / "kms", [sim.listen()], chain_id=CHAIN, protocol_version=version)
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    try:
        link = accept(sim, kms)
        pub = bytes(link.pubkey().pub_key)
        raw = codec.SignRawBytesRequest(chain_id=CHAIN, raw_bytes=b"blob commitment", unique_id="blob-42")
        response = link.request(raw, timeout=10)
        assert response.signature == b""
        assert response.error is not None and "Celestia" in response.error.description
        vote = make_vote(3, 0, PRECOMMIT, "b3")  # the same connection, right after
        signed = link.sign_vote(vote)
        assert signed.error is None and verify(pub, vote_sign_bytes(CHAIN, vote), bytes(signed.vote.signature))
        link.close()
        assert kms.proc is not None and kms.proc.poll() is None, "the process keeps serving"
    finally:
        kms.stop()
        sim.close()
    lines = [json.loads(line) for line in kms.log_text().splitlines() if line.startswith("{")]
    refusals = [line for line in lines if line.get("kind") == "sign_raw_bytes"]
    assert len(refusals) == 1 and refusals[0]["unique_id"] == "blob-42"
    assert sum(line.get("event") == "validator_connected" for line in lines) == 1, "no reconnect was needed"
