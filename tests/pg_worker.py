"""A pykms-like signing process for the multi-process PostgreSQL guard tests: one PostgresGuard, a real Ed25519 key.

Run as ``python -m tests.pg_worker DSN CHAIN SEED START_HEIGHT HEIGHTS [TIMEOUT_MS [wait]]`` (``wait``: start
signing on a line from stdin, after printing READY). For every height from START_HEIGHT on
it asks the guard for a proposal, a prevote and a precommit at round 0, each for block 1 or block 2 (chosen from
SEED: two workers with different seeds send identical and conflicting requests for the same HRS), with a
timestamp that sometimes differs (timestamp-only repeats). Each outcome is one line on stdout, flushed before the
next request, so a signature counts as "escaped" exactly when its line was written:

    SIG h r s fresh|reused <signature hex> <sign bytes hex>
    REFUSED h r s <error class>
    UNAVAILABLE h r s <error class>

The parent checks the lines of all workers (and of workers it SIGKILLed) together.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator

from nacl.signing import SigningKey

from pykms.errors import DoubleSignError, InvalidRequest, StateError
from pykms.guard.postgres import PostgresGuard
from tests.test_guard_support import sign_bytes

#: The key every worker signs with (one validator); a fixed test seed.
KEY_SEED = bytes(range(32))


def requests(seed: int, start: int, heights: int) -> Iterator[tuple[int, int, int, bytes]]:
    """Lazily: a worker may be asked for far more heights than it lives to sign."""
    rng = random.Random(seed)
    for height in range(start, start + heights):
        for step in (1, 2, 3):
            block = rng.choice((1, 2))
            ts = (1_700_000_000 + height, rng.choice((0, 0, 0, 1)))
            yield (height, 0, step, sign_bytes(height, 0, step, block, ts))


def main(argv: list[str]) -> int:
    dsn, chain, seed, start, heights = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    key = SigningKey(KEY_SEED)

    def sign(data: bytes) -> bytes:
        return bytes(key.sign(data).signature)

    guard = PostgresGuard(dsn, chain, timeout_ms=int(argv[5]) if len(argv) > 5 else 2000)
    out = sys.stdout
    print("READY", flush=True)
    if len(argv) > 6 and argv[6] == "wait":
        sys.stdin.readline()  # the parent starts every worker at once
    try:
        for height, round_, step, data in requests(seed, start, heights):
            try:
                outcome = guard.check_and_sign(height, round_, step, data, sign)
            except (DoubleSignError, InvalidRequest) as exc:
                out.write(f"REFUSED {height} {round_} {step} {type(exc).__name__}\n")
            except StateError as exc:
                out.write(f"UNAVAILABLE {height} {round_} {step} {type(exc).__name__}\n")
            else:
                kind = "fresh" if outcome.fresh else "reused"
                out.write(f"SIG {height} {round_} {step} {kind} {outcome.signature.hex()} {data.hex()}\n")
            out.flush()
    finally:
        guard.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
