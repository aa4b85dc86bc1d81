"""Key material in the forms a leak would take (raw, hex, base64 at every alignment), and a scanner for them.

Used by the session-end scan in tests/conftest.py and proven able to fail by tests/test_secrets_scan.py. A seed is
searched through a 12-byte window, so a truncated or embedded copy is found too; the Ed25519 expanded key (SHA-512
of the seed: clamped scalar and prefix) is searched the same way. A 12-byte window of random key material has a
2^-96 chance of occurring by accident, so a hit is a leak.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

__all__ = ["harvest_key_files", "needles", "scan"]

WINDOW = 12  # bytes of key material per needle; a multiple of 3 so base64 of it has no padding


#: A window with fewer distinct bytes is skipped: test fixtures use keys like 32 zero bytes, which cannot be told
#: from a zero hash in a log; a random 12-byte window has fewer than 8 distinct values with probability < 1e-4.
MIN_DISTINCT = 8


def _windows(secret: bytes) -> list[bytes]:
    chunks = [secret[i : i + WINDOW] for i in range(0, len(secret) - WINDOW + 1, WINDOW)]
    return [c for c in chunks if len(set(c)) >= MIN_DISTINCT]


def _b64_forms(chunk: bytes) -> list[bytes]:
    """base64 (standard and url-safe) of ``chunk`` at the three alignments it can have inside a longer blob."""
    forms = []
    for shift in range(3):
        enc = base64.b64encode(b"\0" * shift + chunk + b"\0" * 3)
        # drop the characters that mix in the unknown neighbours: 4 at the front when shifted, 4 at the end
        body = enc[4 if shift else 0 : -4][:_B64_CHARS]
        forms += [body, body.replace(b"+", b"-").replace(b"/", b"_")]
    return forms


def needles(seed: bytes) -> dict[bytes, str]:
    """Byte strings whose presence in a log means ``seed`` (or its expanded key) leaked; value names the form."""
    expanded = bytearray(hashlib.sha512(seed[:32]).digest())
    expanded[0] &= 248  # RFC 8032 §5.1.5 clamping of the scalar half
    expanded[31] &= 127
    expanded[31] |= 64
    out: dict[bytes, str] = {}
    for label, material in (("seed", seed), ("expanded key", bytes(expanded))):
        for chunk in _windows(material):
            out[chunk] = f"{label} raw"
            out[binascii.hexlify(chunk)] = f"{label} hex"  # logs are lowered before the hex search
            for form in _b64_forms(chunk):
                out[form] = f"{label} base64"
    return out


_HEX_RUN = re.compile(rb"[0-9a-fA-F]{%d,}" % (2 * WINDOW))
_B64_CHARS = 12  # base64 characters per needle (see _b64_forms)
_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{%d,}" % _B64_CHARS)


def _windows_in(runs: Iterable[bytes], width: int, table: dict[bytes, str]) -> set[str]:
    found = set()
    for run in runs:
        for i in range(len(run) - width + 1):
            form = table.get(run[i : i + width])
            if form is not None:
                found.add(form)
    return found


def scan(seeds: Iterable[bytes], blobs: Iterable[tuple[str, bytes]]) -> list[str]:
    """Every (source, form) where a seed appears in one of ``blobs``; empty means clean.

    Text forms are found by cutting the blob into hex and base64 runs and looking every window up in a table, so
    the cost grows with the logs, not with logs x keys (the suite creates hundreds of keys).
    """
    raw: dict[bytes, str] = {}
    hexes: dict[bytes, str] = {}
    b64: dict[bytes, str] = {}
    for seed in seeds:
        if len(set(seed)) < 8:
            # A patterned test fixture (all zeros, one repeated byte): its forms are ordinary data too, e.g. the
            # audit log's all-zero first hash. A real seed from os.urandom has ~30 distinct bytes in 32.
            continue
        for needle, form in needles(seed).items():
            (raw if form.endswith("raw") else hexes if form.endswith("hex") else b64)[needle] = form
    hits = []
    for source, blob in blobs:
        ascii_only = blob.isascii()
        found = {form for needle, form in raw.items() if (needle.isascii() or not ascii_only) and needle in blob}
        found |= _windows_in((m.group().lower() for m in _HEX_RUN.finditer(blob)), 2 * WINDOW, hexes)
        found |= _windows_in((m.group() for m in _B64_RUN.finditer(blob)), _B64_CHARS, b64)
        hits += [f"{source}: {form}" for form in sorted(found)]
    return hits


def _seed_from(data: bytes) -> bytes | None:
    text = data.strip()
    if len(text) in (32, 64) and not text.isascii():
        return text[:32]
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict):
        priv = doc.get("priv_key")
        if isinstance(priv, dict) and isinstance(priv.get("value"), str):
            text = priv["value"].encode()
    for decode in (base64.b64decode, binascii.unhexlify):
        try:
            raw = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(raw) in (32, 64):
            return raw[:32]
    if len(text) in (32, 64):
        return text[:32]
    return None


def harvest_key_files(root: Path) -> list[bytes]:
    """Seeds in every key file under ``root`` (*.key, priv_validator_key.json, node_key.json), in any format."""
    seeds = []
    if not root.exists():
        return seeds
    for path in root.rglob("*"):
        name = path.name
        if not (name.endswith(".key") or name in ("priv_validator_key.json", "node_key.json")):
            continue
        try:
            if not path.is_file() or path.stat().st_size > 4096:
                continue
            seed = _seed_from(path.read_bytes())
        except OSError:
            continue
        if seed is not None:
            seeds.append(seed)
    return seeds
