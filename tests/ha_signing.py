"""Two real ``pykms start`` instances on one shared PostgreSQL guard, each serving one simulated sentry; the two
sentries ask for conflicting blocks at the same heights, one height after the other, while a test breaks the
database underneath. Every reply is recorded with the time it arrived, and the figures are computed from them.

Double signs are judged as everywhere in the tests: every signature is verified over its sign bytes, and two
signatures over different sign bytes for one height/round/step are a double sign. The votes carry a fixed
timestamp, so the only difference between the two sentries' requests is the block (a real conflict).
"""

from __future__ import annotations

import base64
import itertools
import os
import statistics
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from pykms.cli.main import main as pykms_main
from pykms.harness.simulator import PREVOTE, SignerLink, ValidatorSimulator, make_vote
from pykms.keyfiles import write_secret_file
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import vote_sign_bytes
from tests.e2e import SECRETS, KmsProcess, accept, verify

TIMESTAMP = (1_700_000_000, 0)
#: The guard's budget per signing transaction (pykms's default).
TIMEOUT_MS = 2000

HISTORY_SQL = """
CREATE TABLE IF NOT EXISTS test_history (id bigserial, chain_id text, height bigint, round int, step int,
                                         signature bytea, sign_bytes bytea);
CREATE OR REPLACE FUNCTION test_log() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
    INSERT INTO test_history (chain_id, height, round, step, signature, sign_bytes)
    VALUES (NEW.chain_id, NEW.height, NEW.round, NEW.step, NEW.signature, NEW.sign_bytes);
    RETURN NEW; END $$;
DROP TRIGGER IF EXISTS test_log ON pykms_sign_state;
CREATE TRIGGER test_log AFTER UPDATE ON pykms_sign_state FOR EACH ROW EXECUTE FUNCTION test_log();
"""


@dataclass(frozen=True)
class Signed:
    at: float  # time.monotonic() when the reply arrived
    sentry: int
    height: int
    round: int
    step: int
    sign_bytes: bytes
    signature: bytes


@dataclass
class Figures:
    """What one scenario measured."""

    signatures: int
    refused: int  # refusals of the conflicting request at a height (one per height is the guard working)
    failed: int  # errors for any other reason: database unavailable, commit unknown (fail closed)
    double_signs: int
    invalid: int
    not_on_primary: int
    gap_s: float | None  # the longest stretch without a signature ending after the fault (None: no fault marked)

    def line(self, name: str) -> str:
        gap = "n/a" if self.gap_s is None else f"{self.gap_s:.1f} s"
        return (
            f"[ha {name}] gap without a signature {gap}; signatures returned {self.signatures}; "
            f"conflicts refused {self.refused}; failed closed {self.failed}; double signs {self.double_signs}; "
            f"invalid {self.invalid}; returned but not on the primary {self.not_on_primary}"
        )


@dataclass
class HaPair:
    """The two instances, their sentries and everything they were given."""

    home: Path
    chain_id: str
    dsn: str
    sims: list[ValidatorSimulator] = field(default_factory=list)
    kms: list[KmsProcess] = field(default_factory=list)
    links: list[SignerLink] = field(default_factory=list)
    pub: bytes = b""
    signed: list[Signed] = field(default_factory=list)
    failures: list[tuple[float, int, int, str]] = field(default_factory=list)
    height: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def start(cls, home: Path, dsn: str, chain_id: str) -> HaPair:
        """Writes both configs (same key, same DSN), creates the schema and the chain's row, starts both."""
        home.mkdir(parents=True, exist_ok=True)
        pair = cls(home, chain_id, dsn)
        seed = os.urandom(32)
        SECRETS.append(seed)
        key = home / "consensus.key"
        write_secret_file(key, base64.b64encode(seed))
        dsn_file = home / "guard.dsn"
        write_secret_file(dsn_file, dsn.encode() + b"\n")
        configs = []
        for i in range(2):
            sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=chain_id, dialect=Dialect.V0_38)
            addr = sim.listen()
            identity = home / f"identity-{i}.key"
            write_secret_file(identity, base64.b64encode(os.urandom(32)))
            config = home / f"instance-{i}.toml"
            config.write_text(
                f'[[chain]]\nid = "{chain_id}"\nkey_format = {{ type = "hex" }}\n\n'
                f'[[providers.softsign]]\nchain_ids = ["{chain_id}"]\nkey_type = "consensus"\npath = "{key}"\n\n'
                f'[[validator]]\nchain_id = "{chain_id}"\naddr = "{addr}"\nsecret_key = "{identity}"\n'
                f'protocol_version = "v0.38"\n\n'
                f'[guard]\nbackend = "postgres"\ndsn_file = "{dsn_file}"\ntimeout_ms = {TIMEOUT_MS}\n'
            )
            pair.sims.append(sim)
            configs.append(config)
        assert pykms_main(["guard", "init-db", "-c", str(configs[0])]) == 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(HISTORY_SQL)
        assert pykms_main(["state", "init", "-c", str(configs[0]), "--chain", chain_id]) == 0
        pair.kms = [KmsProcess(configs[i], home / f"pykms-{i}.log") for i in range(2)]
        for k in pair.kms:
            k.start()
        pair.links = [accept(pair.sims[i], pair.kms[i], timeout=30) for i in range(2)]
        pair.pub = bytes(pair.links[0].pubkey().pub_key)
        return pair

    # -- load -------------------------------------------------------------------------------------------------------

    def run(self, pause_s: float = 0.01) -> None:
        """Both sentries ask, at the same moment, for conflicting prevotes at each height, until ``stop()``."""
        barrier = threading.Barrier(2, action=self._next_height)
        self._next_height()

        def sentry(i: int) -> None:
            link = self.links[i]
            while not self._stop.is_set():
                try:
                    barrier.wait(timeout=60)
                except threading.BrokenBarrierError:
                    return
                if self._stop.is_set():
                    barrier.abort()
                    return
                h = self.height
                vote = make_vote(h, 0, PREVOTE, f"block-{i}".encode(), timestamp=TIMESTAMP)
                try:
                    resp = link.sign_vote(vote)
                except Exception as exc:  # the link died: recorded, and this sentry stops
                    with self._lock:
                        self.failures.append((time.monotonic(), i, h, f"link lost: {exc!r}"))
                    barrier.abort()
                    return
                now = time.monotonic()
                with self._lock:
                    if resp.error is None:
                        sig = bytes(resp.vote.signature)
                        data = vote_sign_bytes(self.chain_id, resp.vote)
                        self.signed.append(Signed(now, i, h, 0, PREVOTE, data, sig))
                    else:
                        self.failures.append((now, i, h, str(resp.error.description)))
                time.sleep(pause_s)

        self._threads = [threading.Thread(target=sentry, args=(i,), daemon=True) for i in range(2)]
        for t in self._threads:
            t.start()

    def _next_height(self) -> None:
        self.height += 1

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        self._threads = []
        self._stop.clear()

    def close(self) -> None:
        self.stop()
        for link in self.links:
            link.close()
        for k in self.kms:
            k.stop()
        for s in self.sims:
            s.close()

    # -- observation ------------------------------------------------------------------------------------------------

    def count_since(self, t: float) -> int:
        with self._lock:
            return sum(1 for s in self.signed if s.at > t)

    def wait_signatures(self, n: int, *, since: float, timeout: float) -> bool:
        """Until ``n`` signatures arrived after ``since``; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count_since(since) >= n:
                return True
            time.sleep(0.1)
        return False

    def figures(self, primary_dsn: str, *, fault_at: float | None) -> Figures:
        """Computes the figures; the committed history is read from ``primary_dsn`` (the current primary)."""
        with self._lock:
            signed = list(self.signed)
            refused = sum(1 for f in self.failures if "conflict" in f[3])
            failed = len(self.failures) - refused
        by_hrs: dict[tuple[int, int, int], set[bytes]] = defaultdict(set)
        invalid = 0
        for s in signed:
            if not verify(self.pub, s.sign_bytes, s.signature):
                invalid += 1
            by_hrs[(s.height, s.round, s.step)].add(s.sign_bytes)
        doubles = sum(1 for payloads in by_hrs.values() if len(payloads) > 1)
        with psycopg.connect(primary_dsn, autocommit=True, connect_timeout=5) as conn:
            # The guard stores FilePV's step numbers, not vote types: height, round and signature identify a row.
            committed = {
                (h, r, bytes(sig))
                for h, r, sig in conn.execute(
                    "SELECT height, round, signature FROM test_history WHERE chain_id = %s", (self.chain_id,)
                )
            }
        missing = sum(1 for s in signed if (s.height, s.round, s.signature) not in committed)
        gap = None
        if fault_at is not None:
            # The longest silence that ends after the fault (a reply already on its way when the fault hit
            # does not end the gap early).
            times = sorted(s.at for s in signed)
            gaps = [b - a for a, b in itertools.pairwise(times) if b > fault_at]
            gap = max(gaps) if gaps else None
        return Figures(len(signed), refused, failed, doubles, invalid, missing, gap)


def latency_percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) of the samples, in the samples' unit."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99
