"""The threshold provider against in-process cosigner servers on loopback (real sockets, SecretConnection, state).

Each cosigner here is the real ``CosignerServer`` around a real ``Cosigner``; a few are made faulty (a wrong share,
a stall) by overriding one method, to attack the coordinator's failure handling.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey, VerifyKey

from pykms.errors import TransientProviderError
from pykms.guard.state import SignState
from pykms.guard.store import SlotStateStore, create_state_file
from pykms.privval.signbytes import vote_sign_bytes
from pykms.proto.tendermint.types import types_pb2
from pykms.providers.threshold import ThresholdSigner
from pykms.secretconn.identity import node_id
from pykms.threshold import frost
from pykms.threshold.config import ThresholdCosignerAddr
from pykms.threshold.cosigner import Cosigner
from pykms.threshold.server import CosignerServer

CHAIN = "test-chain"


def vote(height: int) -> bytes:
    v = types_pb2.Vote(type=1, height=height, round=0)
    v.timestamp.seconds = height
    return vote_sign_bytes(CHAIN, v)


class BadShare(Cosigner):
    def sign(self, session: str, message: bytes, commitments: Any) -> bytes:
        share = super().sign(session, message, commitments)
        return frost.scalar_from_int(int.from_bytes(share, "little") + 1)


class Stalls(Cosigner):
    def sign(self, session: str, message: bytes, commitments: Any) -> bytes:
        time.sleep(3)
        return super().sign(session, message, commitments)


class Rig:
    def __init__(self, root: Path, kinds: list[type[Cosigner]]) -> None:
        seed = hashlib.sha256(b"rig").digest()
        self.public = bytes(SigningKey(seed).verify_key)
        self.shares = frost.split_secret(frost.secret_scalar_from_seed(seed), 2, len(kinds))
        self.package = frost.public_key_package(self.shares, 2, self.public)
        self.signer_key = SigningKey.generate()
        self.root = root
        self.servers: list[CosignerServer | None] = [None] * len(kinds)
        self.addrs: list[ThresholdCosignerAddr] = []
        self.kinds = kinds
        for i, kind in enumerate(kinds):
            create_state_file(root / f"state{i}", SignState(0, 0, 0), fmt="slots")
            identity = SigningKey.generate()
            server = self._serve(i, kind, identity, 0)
            host, port = server.address
            self.addrs.append(
                ThresholdCosignerAddr(f"tcp://{host}:{port}", host, port, node_id(bytes(identity.verify_key)))
            )
        self.identities = []

    def _serve(self, i: int, kind: type[Cosigner], identity: SigningKey, port: int) -> CosignerServer:
        cosigner = kind(self.shares[i], self.package, {CHAIN: SlotStateStore(self.root / f"state{i}")})
        allowed = (node_id(bytes(self.signer_key.verify_key)),)
        server = CosignerServer(cosigner, identity, allowed, "127.0.0.1", port)
        server._identity_seed = identity  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers[i] = server
        return server

    def stop(self, i: int) -> None:
        server = self.servers[i]
        assert server is not None
        server.stop()
        server.cosigner.close()
        self.servers[i] = None

    def restart(self, i: int) -> None:
        old = self.servers[i]
        assert old is not None
        identity = old._identity_seed  # type: ignore[attr-defined]
        self.stop(i)
        self._serve(i, self.kinds[i], identity, self.addrs[i].port)

    def signer(self, timeout_s: float = 2.0) -> ThresholdSigner:
        return ThresholdSigner(self.package, self.signer_key, self.addrs, timeout_s=timeout_s, retry_after_s=0.5)

    def close(self) -> None:
        for i, server in enumerate(self.servers):
            if server is not None:
                self.stop(i)


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(kinds: list[type[Cosigner]]) -> Rig:
        root = tmp_path / str(len(rigs))
        root.mkdir()
        rigs.append(Rig(root, kinds))
        return rigs[-1]

    yield make
    for rig in rigs:
        rig.close()


def test_signs_and_uses_preprocessed_commitments(rig_factory: Any) -> None:
    rig = rig_factory([Cosigner, Cosigner, Cosigner])
    signer = rig.signer()
    rounds: list[int] = []
    real_round = signer._round

    def counting(*args: Any, **kwargs: Any) -> Any:
        rounds.append(1)
        return real_round(*args, **kwargs)

    signer._round = counting  # type: ignore[method-assign]
    for height in range(1, 11):
        VerifyKey(rig.public).verify(vote(height), signer.sign(vote(height)))
    # The first signature takes both rounds; then each share brings the next commitment: one round trip each.
    assert len(rounds) == 2 + 9
    signer.close()


def test_a_wrong_share_is_found_and_its_cosigner_left_out(rig_factory: Any) -> None:
    rig = rig_factory([BadShare, Cosigner, Cosigner])
    signer = rig.signer()
    for height in range(1, 6):
        VerifyKey(rig.public).verify(vote(height), signer.sign(vote(height)))
    signer.close()


def test_a_stalled_cosigner_is_skipped_within_the_deadline(rig_factory: Any) -> None:
    rig = rig_factory([Stalls, Cosigner, Cosigner])
    signer = rig.signer(timeout_s=1.5)
    for height in range(1, 6):
        started = time.monotonic()
        VerifyKey(rig.public).verify(vote(height), signer.sign(vote(height)))
        assert time.monotonic() - started < 1.5  # within the budget, the stalled one's third of it included
    signer.close()


def test_a_restarted_cosigner_forgets_its_commitments_and_is_asked_again(rig_factory: Any) -> None:
    rig = rig_factory([Cosigner, Cosigner, Cosigner])
    signer = rig.signer()
    signer.sign(vote(1))
    rig.restart(0)
    rig.restart(1)  # both holders of preprocessed commitments lost them (and the connections)
    for height in range(2, 5):
        VerifyKey(rig.public).verify(vote(height), signer.sign(vote(height)))
    signer.close()


def test_fewer_than_t_cosigners_fail_with_reasons(rig_factory: Any) -> None:
    rig = rig_factory([Cosigner, Cosigner, Cosigner])
    signer = rig.signer(timeout_s=1.0)
    signer.sign(vote(1))
    rig.stop(0)
    rig.stop(1)
    with pytest.raises(TransientProviderError, match="2 of 3 needed") as err:
        signer.sign(vote(2))
    assert rig.addrs[0].addr in str(err.value) and rig.addrs[1].addr in str(err.value)
    signer.close()


def test_two_coordinators_at_once(rig_factory: Any) -> None:
    """Two signer instances sharing the cosigners: identical votes both get a valid signature; conflicting ones
    at one height/round/step cannot both be signed."""
    rig = rig_factory([Cosigner, Cosigner, Cosigner])
    first, second = rig.signer(), rig.signer()  # both with the rig's pinned signer identity
    results: dict[str, list[bytes]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def run(name: str, signer: ThresholdSigner) -> None:
        for height in range(1, 11):  # both asked for each vote at once, as two sentries' requests arrive
            barrier.wait()
            results[name].append(signer.sign(vote(height)))

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", first), ("b", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [len(signatures) for signatures in results.values()] == [10, 10]
    for signatures in results.values():
        for height, signature in enumerate(signatures, start=1):
            VerifyKey(rig.public).verify(vote(height), signature)
    votes = []
    for n in (1, 2):
        v = types_pb2.Vote(type=2, height=20, round=0)
        v.block_id.hash = bytes([n]) * 32
        v.timestamp.seconds = 1
        votes.append(vote_sign_bytes(CHAIN, v))
    VerifyKey(rig.public).verify(votes[0], first.sign(votes[0]))
    with pytest.raises(TransientProviderError, match="conflicting"):
        second.sign(votes[1])
    first.close()
    second.close()
