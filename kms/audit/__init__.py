"""A tamper-evident audit log: one hash-chained JSON line per signature and per refusal, per chain.

When a signer host is compromised, the first question is how many signatures the intruder obtained. Every
record carries the SHA-256 of the previous record, so ``pykms audit verify`` finds the exact record where a file
was edited, reordered or cut, and ``--state`` checks that the last signature in the log is the one the
double-sign state holds (which catches records removed from the end: a hash chain alone cannot, since any prefix
of a chain is a valid chain).

The record fields, rotation, crash recovery and the two ``sync`` modes with their measured cost are specified in
docs/observability.md ("Audit log", "Durability and latency of the audit log"); ``record.py`` holds the canonical
JSON and hash that writer and readers share. Beyond that page: ``step`` is 0 and ``sign_bytes_sha256`` the hash
of no bytes when a request was refused before its type or sign bytes were known; readers ignore the zero padding
after the last record (``sync = "always"`` preallocates ``PREALLOC_BYTES`` at a time) and ``close`` trims it.

Order. A record that carries a signature is written only once the state covering that signature is durable (the
handler calls ``record`` after the guard's save): a crash or a failed state write can never leave in the log a
valid signature that was not released, which would be evidence of a double sign once the same height/round/step
is signed again after a restart. Logs written by older versions may hold a ``signed`` record followed by an
``error`` record for the same request (the record was begun before the state's save, which then failed); readers
count that pair as withheld.
"""

from pykms.audit.record import AuditCorrupt, AuditError, parse_time
from pykms.audit.verify import order_files, summarize, verify_files
from pykms.audit.writer import AuditLog, SyncMode

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
