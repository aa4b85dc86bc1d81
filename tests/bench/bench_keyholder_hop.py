"""The cost of the key-holder hop: p50/p99 of sign() in-process vs over the UNIX socket to another process.

The key holder is the channel tests' DictKeyHolder (a PyNaCl key, a dict for state), so the difference is the
channel itself (wire encode/decode, two socket crossings, the server thread), not the guard or the disk.
Run from the repository root: .venv/bin/python -m tests.bench.bench_keyholder_hop [N]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pykms.keyholder.client import RemoteKeyHolder
from tests.keyholder_peer import DictKeyHolder

SEED = bytes(range(1, 33))


def bench(holder: Any, n: int, label: str) -> float:
    times = []
    for i in range(n):
        sign_bytes = (i + 1).to_bytes(8, "big") + b"x" * 150  # about a precommit's size
        t = time.perf_counter()
        holder.sign("chain-a", sign_bytes)
        times.append(time.perf_counter() - t)
    times.sort()
    print(f"{label}: p50 {times[n // 2] * 1e6:.1f} us, p99 {times[int(n * 0.99)] * 1e6:.1f} us")
    return times[n // 2]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    local = bench(DictKeyHolder(SEED), n, "in-process")
    sock = Path(tempfile.mkdtemp()) / "kh" / "keyholder.sock"
    peer = [sys.executable, str(Path(__file__).parent.parent / "keyholder_peer.py"), str(sock), SEED.hex()]
    proc = subprocess.Popen(peer, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        client = RemoteKeyHolder(sock)
        remote = bench(client, n, "key holder in another process")
        client.close()
        print(f"hop cost at p50: {(remote - local) * 1e6:.1f} us")
    finally:
        proc.kill()
        proc.wait()


if __name__ == "__main__":
    main()
