"""The generated protobuf modules: current, importable under pykms.proto, and numbered as docs/protocol.md §2 says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from pykms.proto.cometbft.crypto.v1 import keys_pb2 as v1_keys
from pykms.proto.cometbft.p2p.v1 import conn_pb2 as v1_conn
from pykms.proto.cometbft.privval.v1 import types_pb2 as v1_privval
from pykms.proto.cometbft.types.v1 import canonical_pb2 as v1_canonical
from pykms.proto.cometbft.types.v1 import types_pb2 as v1_types
from pykms.proto.tendermint.crypto import keys_pb2
from pykms.proto.tendermint.p2p import conn_pb2
from pykms.proto.tendermint.privval import types_pb2 as privval
from pykms.proto.tendermint.types import canonical_pb2, types_pb2

REGEN = Path(__file__).resolve().parent.parent / "proto" / "regen.py"

T = FieldDescriptor


def fields(desc: Descriptor) -> dict[str, tuple[int, int]]:
    return {f.name: (f.number, f.type) for f in desc.fields}


def test_generated_modules_are_current() -> None:
    # Same check CI runs; fails with the file names when a .proto changed without `python proto/regen.py`.
    result = subprocess.run([sys.executable, str(REGEN), "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_modules_live_under_pykms_proto() -> None:
    for cls in (types_pb2.Vote, privval.Message, v1_privval.Message, v1_types.Vote, canonical_pb2.CanonicalVote):
        assert cls.__module__.startswith("pykms.proto."), cls.__module__


# docs/protocol.md §2.5 (proto/tendermint/types/types.proto v0.38.25, proto/cometbft/types/v1/types.proto v1.0.1)
VOTE = {
    "type": (1, T.TYPE_ENUM), "height": (2, T.TYPE_INT64), "round": (3, T.TYPE_INT32),
    "block_id": (4, T.TYPE_MESSAGE), "timestamp": (5, T.TYPE_MESSAGE), "validator_address": (6, T.TYPE_BYTES),
    "validator_index": (7, T.TYPE_INT32), "signature": (8, T.TYPE_BYTES), "extension": (9, T.TYPE_BYTES),
    "extension_signature": (10, T.TYPE_BYTES),
}  # fmt: skip
PROPOSAL = {
    "type": (1, T.TYPE_ENUM), "height": (2, T.TYPE_INT64), "round": (3, T.TYPE_INT32),
    "pol_round": (4, T.TYPE_INT32), "block_id": (5, T.TYPE_MESSAGE), "timestamp": (6, T.TYPE_MESSAGE),
    "signature": (7, T.TYPE_BYTES),
}  # fmt: skip
# docs/protocol.md §2.6 (canonical.proto)
CANONICAL_VOTE = {
    "type": (1, T.TYPE_ENUM), "height": (2, T.TYPE_SFIXED64), "round": (3, T.TYPE_SFIXED64),
    "block_id": (4, T.TYPE_MESSAGE), "timestamp": (5, T.TYPE_MESSAGE), "chain_id": (6, T.TYPE_STRING),
}  # fmt: skip
CANONICAL_PROPOSAL = {
    "type": (1, T.TYPE_ENUM), "height": (2, T.TYPE_SFIXED64), "round": (3, T.TYPE_SFIXED64),
    "pol_round": (4, T.TYPE_INT64), "block_id": (5, T.TYPE_MESSAGE), "timestamp": (6, T.TYPE_MESSAGE),
    "chain_id": (7, T.TYPE_STRING),
}  # fmt: skip
CANONICAL_EXTENSION = {
    "extension": (1, T.TYPE_BYTES), "height": (2, T.TYPE_SFIXED64), "round": (3, T.TYPE_SFIXED64),
    "chain_id": (4, T.TYPE_STRING),
}  # fmt: skip


@pytest.mark.parametrize(("types", "canonical"), [(types_pb2, canonical_pb2), (v1_types, v1_canonical)])
def test_consensus_types(types: object, canonical: object) -> None:
    assert fields(types.Vote.DESCRIPTOR) == VOTE  # type: ignore[attr-defined]
    assert fields(types.Proposal.DESCRIPTOR) == PROPOSAL  # type: ignore[attr-defined]
    assert fields(types.BlockID.DESCRIPTOR) == {"hash": (1, T.TYPE_BYTES), "part_set_header": (2, T.TYPE_MESSAGE)}  # type: ignore[attr-defined]
    assert fields(types.PartSetHeader.DESCRIPTOR) == {"total": (1, T.TYPE_UINT32), "hash": (2, T.TYPE_BYTES)}  # type: ignore[attr-defined]
    assert fields(canonical.CanonicalVote.DESCRIPTOR) == CANONICAL_VOTE  # type: ignore[attr-defined]
    assert fields(canonical.CanonicalProposal.DESCRIPTOR) == CANONICAL_PROPOSAL  # type: ignore[attr-defined]
    assert fields(canonical.CanonicalVoteExtension.DESCRIPTOR) == CANONICAL_EXTENSION  # type: ignore[attr-defined]
    assert {v.name: v.number for v in types.SignedMsgType.DESCRIPTOR.values} == {  # type: ignore[attr-defined]
        "SIGNED_MSG_TYPE_UNKNOWN": 0, "SIGNED_MSG_TYPE_PREVOTE": 1, "SIGNED_MSG_TYPE_PRECOMMIT": 2,
        "SIGNED_MSG_TYPE_PROPOSAL": 32,
    }  # fmt: skip


def test_privval_message_cases() -> None:
    # docs/protocol.md §2.3
    old = {f.number: f.name for f in privval.Message.DESCRIPTOR.fields}
    new = {f.number: f.name for f in v1_privval.Message.DESCRIPTOR.fields}
    assert old == {
        1: "pub_key_request", 2: "pub_key_response", 3: "sign_vote_request", 4: "signed_vote_response",
        5: "sign_proposal_request", 6: "signed_proposal_response", 7: "ping_request", 8: "ping_response",
    }  # fmt: skip
    assert new == {**old, 9: "sign_bytes_request", 10: "sign_bytes_response"}
    assert all(f.containing_oneof is not None for f in privval.Message.DESCRIPTOR.fields)


def test_privval_bodies() -> None:
    # docs/protocol.md §2.4
    assert fields(privval.PubKeyResponse.DESCRIPTOR) == {"pub_key": (1, T.TYPE_MESSAGE), "error": (2, T.TYPE_MESSAGE)}
    assert fields(v1_privval.PubKeyResponse.DESCRIPTOR) == {
        "error": (2, T.TYPE_MESSAGE), "pub_key_bytes": (3, T.TYPE_BYTES), "pub_key_type": (4, T.TYPE_STRING),
    }  # fmt: skip
    assert fields(privval.SignVoteRequest.DESCRIPTOR) == {"vote": (1, T.TYPE_MESSAGE), "chain_id": (2, T.TYPE_STRING)}
    assert fields(v1_privval.SignVoteRequest.DESCRIPTOR) == {
        "vote": (1, T.TYPE_MESSAGE), "chain_id": (2, T.TYPE_STRING), "skip_extension_signing": (3, T.TYPE_BOOL),
    }  # fmt: skip
    assert fields(v1_privval.SignBytesRequest.DESCRIPTOR) == {"value": (1, T.TYPE_BYTES)}
    assert fields(v1_privval.SignBytesResponse.DESCRIPTOR) == {
        "signature": (1, T.TYPE_BYTES), "error": (2, T.TYPE_MESSAGE),
    }  # fmt: skip
    for mod in (privval, v1_privval):
        assert fields(mod.RemoteSignerError.DESCRIPTOR) == {
            "code": (1, T.TYPE_INT32),
            "description": (2, T.TYPE_STRING),
        }
    assert {v.name: v.number for v in privval.Errors.DESCRIPTOR.values} == {
        "ERRORS_UNKNOWN": 0, "ERRORS_UNEXPECTED_RESPONSE": 1, "ERRORS_NO_CONNECTION": 2,
        "ERRORS_CONNECTION_TIMEOUT": 3, "ERRORS_READ_TIMEOUT": 4, "ERRORS_WRITE_TIMEOUT": 5,
    }  # fmt: skip


def test_keys_and_auth_sig_message() -> None:
    # docs/protocol.md §1.2: AuthSigMessage{1 pub_key PublicKey, 2 sig}; PublicKey oneof ed25519=1, secp256k1=2, bls=3.
    assert fields(keys_pb2.PublicKey.DESCRIPTOR) == {"ed25519": (1, T.TYPE_BYTES), "secp256k1": (2, T.TYPE_BYTES)}
    assert fields(v1_keys.PublicKey.DESCRIPTOR) == {
        "ed25519": (1, T.TYPE_BYTES), "secp256k1": (2, T.TYPE_BYTES), "bls12381": (3, T.TYPE_BYTES),
    }  # fmt: skip
    for mod in (conn_pb2, v1_conn):
        assert fields(mod.AuthSigMessage.DESCRIPTOR) == {"pub_key": (1, T.TYPE_MESSAGE), "sig": (2, T.TYPE_BYTES)}
    # test vector D1 (derived, not upstream): side A's 103-byte AuthSigMessage plaintext, length prefix included.
    d1 = bytes.fromhex(
        "660a220a20642b2e4e369ccc4ca89fbd2798ac70bf0bbe8eaadbab9387df242370ad121717124041840cc4724d9fcc03ff91f947add7"
        "09f88ed7a8f965d6d702a2a715965dcd4d2198a380a925b7c17b4fa0bfb35c5f8ed51254fa42711d3e7a869c86f9d4f00f"
    )
    for mod in (conn_pb2, v1_conn):
        msg = mod.AuthSigMessage(sig=d1[-64:])
        msg.pub_key.ed25519 = d1[5:37]
        body = msg.SerializeToString()
        assert bytes([len(body)]) + body == d1
        assert mod.AuthSigMessage.FromString(d1[1:]).pub_key.ed25519 == d1[5:37]
