"""The audit log behind the real request handler and FileGuard: one record per request, written only once the state
is durable and durable itself before the reply; a state that fails to save leaves an ``error`` record and no
signature, and ``verify --state`` accepts the log."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from pykms.audit import AuditError, AuditLog, SyncMode, summarize, verify_files
from pykms.guard.backend import FileGuard
from pykms.guard.state import SignState
from pykms.guard.store import FileOps, JsonStateStore, read_state_file
from pykms.handler import RequestHandler
from pykms.harness.simulator import PRECOMMIT, PREVOTE, make_proposal, make_vote
from pykms.keyholder.local import LocalKeyHolder
from pykms.privval import codec
from pykms.privval.codec import Dialect
from pykms.providers.softsign import SoftsignSigner

CHAIN = "handler-chain"


class FailRename(FileOps):
    """Real file operations; ``rename`` (the JSON store's commit) fails while ``broken`` is set."""

    broken = False

    def rename(self, src: str, dst: str) -> None:
        if self.broken:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().rename(src, dst)


def setup(tmp_path: Path, sync: SyncMode) -> tuple[RequestHandler, AuditLog, FailRename, Path]:
    ops = FailRename()
    state = tmp_path / "state.json"
    JsonStateStore.create(state, SignState.initial()).close()
    guard = FileGuard(CHAIN, JsonStateStore(state, ops=ops))
    audit = AuditLog(tmp_path / "audit.log", CHAIN, sync=sync)
    keyholder = LocalKeyHolder()
    keyholder.add(CHAIN, SoftsignSigner(SigningKey(hashlib.sha256(b"handler").digest())), guard, audit)
    return RequestHandler(keyholder, keyholder.chains()[CHAIN], Dialect.V0_38, chain_id=CHAIN), audit, ops, state


def ask(handler: RequestHandler, request: codec.Request) -> codec.Response:
    replies: list[bytes] = []
    handler.handle(codec.encode_request(Dialect.V0_38, request), replies.append)
    assert len(replies) == 1
    return codec.decode_response(Dialect.V0_38, replies[0])


def vote(height: int, vote_type: int, block: str) -> codec.SignVoteRequest:
    return codec.SignVoteRequest(
        vote=make_vote(height, 0, vote_type, block, timestamp=(1_700_000_000, 0)), chain_id=CHAIN
    )


@pytest.mark.parametrize("sync", ["always", "batch"])
def test_records_match_replies_and_withheld_signature(tmp_path: Path, sync: SyncMode) -> None:
    handler, audit, ops, state = setup(tmp_path, sync)
    released = 0
    for height in (1, 2, 3):
        prop = codec.SignProposalRequest(proposal=make_proposal(height, 0, f"b{height}"), chain_id=CHAIN)
        assert ask(handler, prop).error is None
        assert ask(handler, vote(height, PREVOTE, f"b{height}")).error is None
        assert ask(handler, vote(height, PRECOMMIT, f"b{height}")).error is None
        released += 3
    assert ask(handler, vote(3, PRECOMMIT, "b3")).error is None  # identical repeat: the stored signature
    assert ask(handler, vote(3, PREVOTE, "other")).error is not None  # regression: refused
    ops.broken = True  # the next state save fails after the signature exists: no record may carry it
    failed = ask(handler, vote(4, PREVOTE, "b4"))
    assert failed.error is not None
    ops.broken = False
    audit.close()

    summary = summarize([tmp_path / "audit.log"])
    assert summary.signatures == {(CHAIN, "proposal"): 3, (CHAIN, "prevote"): 3, (CHAIN, "precommit"): 4}
    assert summary.reused == {(CHAIN, "precommit"): 1}
    assert summary.refusals == {(CHAIN, "RegressionError"): 1, (CHAIN, "PersistError"): 1}
    assert summary.withheld == {}
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_bytes().splitlines() if line.strip(b"\0")]
    assert [r["signature"] for r in records if r.get("height") == 4] == [None]  # no record holds that signature
    state_sig = read_state_file(state)[1].signature
    report = verify_files([tmp_path / "audit.log"], state_signature=state_sig)
    assert report.ok, report.problem
    assert report.records == 1 + released + 1 + 1 + 1


def test_one_record_per_signature(tmp_path: Path) -> None:
    handler, audit, _ops, _state = setup(tmp_path, "always")
    seen: list[float] = []
    audit.on_write = seen.append
    assert ask(handler, vote(1, PREVOTE, "x")).error is None
    audit.close()
    lines = (tmp_path / "audit.log").read_bytes().splitlines()
    assert len(lines) == 2 and b'"outcome":"signed"' in lines[1]
    assert len(seen) == 1


@pytest.mark.parametrize("sync", ["always", "batch"])
def test_no_signature_leaves_without_its_record(tmp_path: Path, sync: SyncMode) -> None:
    handler, audit, _ops, _state = setup(tmp_path, sync)
    assert ask(handler, vote(1, PREVOTE, "a")).error is None
    audit.close()  # the audit log can take no more records (as a failed disk would)
    replies: list[bytes] = []
    body = codec.encode_request(Dialect.V0_38, vote(2, PREVOTE, "b"))
    # the refusal's own record fails too and escapes handle() (the runtime then drops the connection); the
    # error reply has gone out first
    with contextlib.suppress(AuditError):
        handler.handle(body, replies.append)
    assert len(replies) == 1
    response = codec.decode_response(Dialect.V0_38, replies[0])
    assert response.error is not None and "could not be made durable" in response.error.description
    assert str(tmp_path) not in response.error.description  # the node learns no local path
    assert "audit log is closed" in handler.keyholder.health()[CHAIN]  # /health reports it
