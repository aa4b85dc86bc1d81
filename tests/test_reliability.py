"""Reliability figures: SIGKILL at random moments under load from two sentries, and N sentries x M chains
sending conflicting requests at once. Bounded for CI; ``scripts/soak`` runs the long forms (env variables below).

Both tests collect every signature the simulated sentries received, verify each with the public key over the sign
bytes of the request, and count a double sign whenever one height/round/step got signatures over two different
payloads (docs/protocol.md §4: the only legitimate second signature at one HRS is the stored one, or the same vote with
the stored timestamp, which FilePV returns; both name the same block).
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nacl.signing import VerifyKey

from pykms.errors import ProtocolError
from pykms.harness.simulator import PRECOMMIT, PREVOTE, SignerLink, ValidatorSimulator, make_vote
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import vote_sign_bytes
from tests.e2e import KmsProcess, write_multi_home

KILLS = int(os.environ.get("PYKMS_SOAK_KILLS", "100"))
KILL_BUDGET_S = float(os.environ.get("PYKMS_SOAK_KILL_BUDGET_S", "100"))


@dataclass
class Ledger:
    """What the sentries received: HRS -> {block: signatures}; and the counts for the figures."""

    signed: dict[tuple[int, int, int], dict[bytes, set[bytes]]] = field(default_factory=dict)
    verified: int = 0
    refused: int = 0
    unanswered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, hrs: tuple[int, int, int], block: bytes, signature: bytes) -> None:
        with self.lock:
            self.signed.setdefault(hrs, {}).setdefault(block, set()).add(signature)
            self.verified += 1

    def double_signs(self) -> dict[tuple[int, int, int], list[bytes]]:
        return {hrs: list(blocks) for hrs, blocks in self.signed.items() if len(blocks) > 1}


def _ask(link: SignerLink, pub: VerifyKey, chain: str, book: Ledger, h: int, r: int, t: int, block: bytes) -> bool:
    vote = make_vote(h, r, t, block, timestamp=(1_700_000_000, 0))
    try:
        resp = link.sign_vote(vote)
    except (ProtocolError, OSError, TimeoutError):
        with book.lock:
            book.unanswered += 1
        return False
    if resp.error is not None:
        with book.lock:
            book.refused += 1
        return True
    pub.verify(vote_sign_bytes(chain, vote), bytes(resp.vote.signature))
    book.add((h, r, 2 if t == PREVOTE else 3), block, bytes(resp.vote.signature))
    return True


@pytest.mark.slow
@pytest.mark.parametrize(
    ("state_format", "isolation"), [("slots", "none"), ("json", "none"), ("slots", "process")], indirect=["isolation"]
)
def test_sigkill_under_load_never_double_signs(tmp_path: Path, state_format: str, isolation: str) -> None:
    chain = "crash-chain"
    # A split start is two interpreters: fewer kills fit the budget, each still lands anywhere in a signature.
    kills_wanted = KILLS if (state_format, isolation) == ("slots", "none") else max(10, KILLS // 4)
    sims = [ValidatorSimulator("tcp://127.0.0.1:0", chain_id=chain, dialect=Dialect.V0_38) for _ in range(2)]
    addrs = [s.listen() for s in sims]
    config = write_multi_home(tmp_path / "kms", {chain: addrs}, state_format=state_format)
    kms = KmsProcess(config, tmp_path / "pykms.log")
    rng = random.Random(int(os.environ.get("PYKMS_SOAK_SEED", "1")))
    book = Ledger()
    pub: VerifyKey | None = None
    height = 1
    kills = 0
    started = time.monotonic()
    try:
        while kills < kills_wanted and time.monotonic() - started < KILL_BUDGET_S:
            kms.start()
            links = [s.accept(timeout=20) for s in sims]
            for link in links:
                link.timeout = 5
            if pub is None:
                pub = VerifyKey(links[0].pubkey().pub_key)
            # After a restart, replay the last heights with the *other* block: all must be refused.
            for back in range(max(1, height - 3), height):
                for t in (PREVOTE, PRECOMMIT):
                    _ask(links[1], pub, chain, book, back, 0, t, f"B{back}".encode())
            stop = threading.Event()

            key: VerifyKey = pub

            def sentry(
                i: int, link: SignerLink, first: int, stop: threading.Event = stop, key: VerifyKey = key
            ) -> None:
                h = first
                while not stop.is_set():
                    for t in (PREVOTE, PRECOMMIT):
                        # sentry 0 asks for block A, sentry 1 for block B at the same HRS: one may be signed.
                        if not _ask(link, key, chain, book, h, 0, t, f"{'AB'[i]}{h}".encode()):
                            return
                    h += 1

            threads = [threading.Thread(target=sentry, args=(i, link, height)) for i, link in enumerate(links)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.0, 0.25))  # random moment: anywhere in read, decide, sign, persist, reply
            kms.kill()
            kills += 1
            stop.set()
            for t in threads:
                t.join(timeout=10)
            for link in links:
                link.close()
            with book.lock:
                height = max((hrs[0] for hrs in book.signed), default=height) + 1
    finally:
        if kms.proc is not None and kms.proc.poll() is None:
            kms.kill()
        for s in sims:
            s.close()
    doubles = book.double_signs()
    print(
        f"\n[crash safety, {state_format}, isolation {isolation}] kills={kills} signatures_verified={book.verified} "
        f"double_signs={len(doubles)} refused={book.refused} unanswered={book.unanswered} "
        f"heights={height - 1} seconds={time.monotonic() - started:.0f}"
    )
    assert not doubles, f"double signs: {doubles}"
    assert kills >= min(kills_wanted, 20)
    assert book.verified > kills  # it kept signing between the kills


def test_n_sentries_by_m_chains_sign_once_per_hrs(tmp_path: Path) -> None:
    chains = int(os.environ.get("PYKMS_SOAK_CHAINS", "3"))
    sentries = int(os.environ.get("PYKMS_SOAK_SENTRIES", "3"))
    heights = int(os.environ.get("PYKMS_SOAK_HEIGHTS", "25"))
    started = time.monotonic()
    sims = {
        f"chain-{c}": [ValidatorSimulator("tcp://127.0.0.1:0", chain_id=f"chain-{c}") for _ in range(sentries)]
        for c in range(chains)
    }
    addrs = {cid: [s.listen() for s in ss] for cid, ss in sims.items()}
    config = write_multi_home(tmp_path / "kms", addrs)
    kms = KmsProcess(config, tmp_path / "pykms.log")
    kms.start()
    books = {cid: Ledger() for cid in sims}
    try:
        links = {cid: [s.accept(timeout=30) for s in ss] for cid, ss in sims.items()}
        pubs = {cid: VerifyKey(ls[0].pubkey().pub_key) for cid, ls in links.items()}
        for h in range(1, heights + 1):
            barrier = threading.Barrier(chains * sentries)

            def go(cid: str, i: int, h: int = h, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                _ask(links[cid][i], pubs[cid], cid, books[cid], h, 0, PREVOTE, f"block-{i}".encode())

            threads = [threading.Thread(target=go, args=(cid, i)) for cid in sims for i in range(sentries)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        for ls in links.values():
            for link in ls:
                link.close()
    finally:
        kms.stop()
        for ss in sims.values():
            for s in ss:
                s.close()
    print(
        f"\n[concurrency] chains={chains} sentries={sentries} heights={heights} "
        f"signatures_verified={sum(b.verified for b in books.values())} "
        f"refused={sum(b.refused for b in books.values())} "
        f"double_signs={sum(len(b.double_signs()) for b in books.values())} "
        f"unanswered={sum(b.unanswered for b in books.values())} seconds={time.monotonic() - started:.0f}"
    )
    for cid, book in books.items():
        assert not book.double_signs(), cid
        # exactly one signature per HRS: every height got one, and only one block
        assert sorted(hrs[0] for hrs in book.signed) == list(range(1, heights + 1)), cid
        assert book.unanswered == 0
        assert book.refused == heights * (sentries - 1)
