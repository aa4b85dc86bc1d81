"""High availability end to end: two real ``pykms start`` processes share one guard in PostgreSQL.

Each instance serves one simulated sentry of the same chain with the same key. Identical requests at both must
get identical signatures, conflicting ones exactly one signature; killing one instance (SIGKILL) never lets the
other sign a conflict, and the survivor keeps signing.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.pg are redefined as parameters)
from __future__ import annotations

import base64
import os
import random
import threading
from pathlib import Path

import pytest

from pykms.cli.main import main as pykms_main
from pykms.harness.simulator import PREVOTE, ValidatorSimulator, make_vote
from pykms.keyfiles import write_secret_file
from pykms.privval.codec import Dialect
from pykms.privval.signbytes import vote_sign_bytes
from tests.e2e import KmsProcess, accept, set_isolation, verify
from tests.pg import pg_dsn, pg_server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
CHAIN = "ha-chain"


def _home(tmp_path: Path, dsn: str) -> tuple[Path, list[ValidatorSimulator], list[Path]]:
    key = tmp_path / "consensus.key"
    write_secret_file(key, base64.b64encode(os.urandom(32)))
    dsn_file = tmp_path / "guard.dsn"
    write_secret_file(dsn_file, dsn.encode() + b"\n")
    sims, configs = [], []
    for i in range(2):
        sim = ValidatorSimulator("tcp://127.0.0.1:0", chain_id=CHAIN, dialect=Dialect.V0_38)
        addr = sim.listen()
        identity = tmp_path / f"identity-{i}.key"
        write_secret_file(identity, base64.b64encode(os.urandom(32)))
        config = tmp_path / f"instance-{i}.toml"
        config.write_text(
            f'[[chain]]\nid = "{CHAIN}"\nkey_format = {{ type = "hex" }}\n\n'
            f'[[providers.softsign]]\nchain_ids = ["{CHAIN}"]\nkey_type = "consensus"\npath = "{key}"\n\n'
            f'[[validator]]\nchain_id = "{CHAIN}"\naddr = "{addr}"\nsecret_key = "{identity}"\n'
            f'protocol_version = "v0.38"\n\n'
            f'[guard]\nbackend = "postgres"\ndsn_file = "{dsn_file}"\n'
        )
        sims.append(sim)
        configs.append(set_isolation(config))
    assert pykms_main(["guard", "init-db", "-c", str(configs[0])]) == 0
    assert pykms_main(["state", "init", "-c", str(configs[0]), "--chain", CHAIN]) == 0
    return tmp_path, sims, configs


@pytest.mark.parametrize("isolation", ["none", "process"], indirect=True)
def test_two_instances_share_one_guard(tmp_path: Path, pg_dsn: str, isolation: str) -> None:
    _, sims, configs = _home(tmp_path, pg_dsn)
    kms = [KmsProcess(configs[i], tmp_path / f"pykms-{i}.log") for i in range(2)]
    for k in kms:
        k.start()
    try:
        links = [accept(sims[i], kms[i]) for i in range(2)]
        pub = bytes(links[0].pubkey().pub_key)
        for height in range(1, 16):
            results: list[object] = [None, None]
            same = height % 2 == 0  # even heights: both sentries relay the same vote; odd: conflicting blocks

            def ask(i: int, h: int = height, s: bool = same, out: list[object] = results) -> None:
                block = b"A" if s else f"block-{i}".encode()
                out[i] = links[i].sign_vote(make_vote(h, 0, PREVOTE, block, timestamp=(1_700_000_000, 0)))

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            signed = [r for r in results if getattr(r, "error", None) is None]
            if same:
                assert len(signed) == 2, f"height {height}: {results}"
                assert bytes(signed[0].vote.signature) == bytes(signed[1].vote.signature)  # type: ignore[attr-defined]
            else:
                assert len(signed) == 1, f"height {height}: {len(signed)} signatures for conflicting blocks"
            for r in signed:
                vote = r.vote  # type: ignore[attr-defined]
                assert verify(pub, vote_sign_bytes(CHAIN, vote), bytes(vote.signature))
        for link in links:
            link.close()
    finally:
        for k in kms:
            k.stop()
        for s in sims:
            s.close()


def test_sigkill_one_instance_the_other_keeps_signing(tmp_path: Path, pg_dsn: str) -> None:
    """Kill instance 0 at random moments while both sign conflicting votes: never two signatures per HRS."""
    _, sims, configs = _home(tmp_path, pg_dsn)
    kms = [KmsProcess(configs[i], tmp_path / f"pykms-{i}.log") for i in range(2)]
    for k in kms:
        k.start()
    rng = random.Random(7)
    signed: dict[int, set[bytes]] = {}
    lock = threading.Lock()
    stop = threading.Event()
    pub_holder: list[bytes] = []
    survivor = accept(sims[1], kms[1])
    pub_holder.append(bytes(survivor.pubkey().pub_key))
    next_height = [1]

    def survivor_loop() -> None:
        while not stop.is_set():
            with lock:
                h = next_height[0]
                next_height[0] += 1
            resp = survivor.sign_vote(make_vote(h, 0, PREVOTE, b"survivor", timestamp=(1_700_000_000, 0)))
            if resp.error is None:
                with lock:
                    signed.setdefault(h, set()).add(bytes(resp.vote.signature))

    thread = threading.Thread(target=survivor_loop)
    thread.start()
    kills = 0
    try:
        for _ in range(8):
            try:
                link = accept(sims[0], kms[0], timeout=20)
            except AssertionError:
                break
            for _ in range(rng.randint(1, 15)):
                with lock:
                    h = next_height[0] - 1  # the height the survivor is at: a conflicting block
                try:
                    resp = link.sign_vote(make_vote(h, 0, PREVOTE, b"victim", timestamp=(1_700_000_000, 0)))
                except Exception:
                    break
                if resp.error is None:
                    with lock:
                        signed.setdefault(h, set()).add(bytes(resp.vote.signature))
            kms[0].kill()
            kills += 1
            link.close()
            kms[0].start()
    finally:
        stop.set()
        thread.join()
        survivor.close()
        for k in kms:
            k.stop()
        for s in sims:
            s.close()
    assert kills >= 5
    doubles = {h: sigs for h, sigs in signed.items() if len(sigs) > 1}
    assert not doubles, f"double signs at heights {sorted(doubles)}"
    assert len(signed) > 20, "the survivor must keep signing while the other instance is killed"
