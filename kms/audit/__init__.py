"""A tamper-evident audit log: one hash-chained JSON line per signature and per refusal, per chain.

When a signer host is compromised, the first question is how many signatures the intruder obtained. Every
record carries the SHA-256 of the previous record, so ``pykms audit verify`` finds the exact record where a file
was edited, reordered or cut, and ``--state`` checks that the last signature in the log is the one the
double-sign state holds (which catches records removed from the end: a hash chain alone cannot, since any prefix
of a chain is a valid chain).

Records: one JSON object per line, UTF-8, no spaces, keys sorted with ``hash`` last. Every record has

==================  ==========================================================================================
``seq``             0 for the very first record of the chain, then +1 per record, continuing across rotated files
``time``            when the record was written, RFC 3339 UTC with nanoseconds (``2026-11-22T19:00:00.123456789Z``)
``prev``            ``hash`` of the record before it in the chain (64 zeros for seq 0), across files too
``kind``            ``open`` (first record of every file), or the request type: ``proposal``, ``prevote``,
                    ``precommit``, or ``vote`` (a vote refused before its type was known)
``chain_id``        the chain this log belongs to (one log, one chain)
``hash``            SHA-256 (hex) of the record's canonical JSON without ``hash``
==================  ==========================================================================================

A signing record (any ``kind`` but ``open``) adds ``height``, ``round``, ``step`` (1 proposal, 2 prevote,
3 precommit, 0 unknown), ``block_id`` (hex of the block hash, "" for nil), ``sign_bytes_sha256`` (hex; of ""
when refused before sign bytes were built), ``signature`` (base64 of what left pykms, null when refused),
``outcome`` (``signed``: a fresh signature; ``reused``: the stored signature returned again for a repeated
request; ``refused``: the guard or a check said no; ``error``: the state could not be made durable or the
provider failed, nothing was released) and ``reason`` (the error class, "" when signed).

An ``open`` record adds ``previous_file`` (the name the previous file was rotated to, or null) and, when the
previous file ended in a torn record (a crash in the middle of a write), ``torn_sha256`` and ``torn_bytes`` of
that fragment, so ``verify`` accepts exactly that damage and no other.

Durability. Every record is written (``pwrite`` into the file, i.e. handed to the kernel) before the reply
leaves, so it survives pykms being killed at any instant. How far it must reach before the reply is
``sync``:

- ``"batch"`` (the default): a thread flushes (``fdatasync``) every 100 ms. A power loss can lose the last 100 ms of
  records, never double-sign state (which has its own flush before the reply); ``verify --state`` then shows the
  log ends short of the state. Adds ~0.05 ms per signature (JSON, hash, pwrite).
- ``"always"``: the record is on stable storage before the reply. The file is preallocated with zeros
  (``PREALLOC_BYTES`` at a time) and written in place, so ``fdatasync`` has no metadata to commit. One more device
  flush per signature: ~0.14 ms on the disk measured, over the 10 % budget there (docs/observability.md has the
  figures), hence not the default.

Order. A record that carries a signature is written only once the state covering that signature is durable (the
handler calls ``record`` after the guard's save): a crash or a failed state write can never leave in the log a
valid signature that was not released, which would be evidence of a double sign once the same height/round/step
is signed again after a restart. Logs written by older versions may hold a ``signed`` record followed by an
``error`` record for the same request (the record was begun before the state's save, which then failed); readers
count that pair as withheld.

Readers ignore the zero padding after the last record; ``close``
trims it.
"""

from pykms.audit.record import AuditCorrupt, AuditError, SyncMode, parse_time
from pykms.audit.verify import order_files, summarize, verify_files
from pykms.audit.writer import AuditLog

__all__ = [
    "AuditCorrupt",
    "AuditError",
    "AuditLog",
    "SyncMode",
    "order_files",
    "parse_time",
    "summarize",
    "verify_files",
]
