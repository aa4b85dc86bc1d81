"""Share files and the group file: how a validator's existing key becomes n FROST shares on disk.

A share file (secret, mode 0600, refused when others can read it) holds one participant's signing share and,
so that every cosigner is self-contained, the public key package: t, the group public key and every
participant's verifying share. The group file (public) holds the package alone; the coordinating signer reads
it to check each share and the aggregate.

Both are JSON with hex fields::

    {"type": "pykms/frost-ed25519-sha512-share", "identifier": 1, "threshold": 2, "participants": 3,
     "group_public_key": "<hex>", "verifying_shares": {"1": "<hex>", ...}, "signing_share": "<hex>"}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from pykms.errors import KeyFileError, ThresholdError
from pykms.keyfiles import read_secret_file, write_secret_file
from pykms.threshold import frost

__all__ = ["load_group_file", "load_share_file", "split_key_file"]

SHARE_TYPE = "pykms/frost-ed25519-sha512-share"
GROUP_TYPE = "pykms/frost-ed25519-sha512-group"
#: Identifiers are encoded in the wire protocol and the files as small integers; 255 cosigners is plenty.
MAX_PARTICIPANTS = 255


def _package_json(package: frost.PublicKeyPackage, participants: int) -> dict[str, Any]:
    return {
        "threshold": package.min_signers,
        "participants": participants,
        "group_public_key": package.group_public_key.hex(),
        "verifying_shares": {str(i): v.hex() for i, v in sorted(package.verifying_shares.items())},
    }


def _require(condition: bool) -> None:
    """A validation step that survives ``python -O`` (an ``assert`` would vanish there)."""
    if not condition:
        raise ValueError


def _parse_package(doc: object, where: str) -> tuple[frost.PublicKeyPackage, int]:
    try:
        if not isinstance(doc, dict):
            raise TypeError
        t, n = doc["threshold"], doc["participants"]
        _require(type(t) is int and type(n) is int and 2 <= t <= n <= MAX_PARTICIPANTS)
        group = frost.check_element(bytes.fromhex(doc["group_public_key"]), "group_public_key")
        raw_shares = doc["verifying_shares"]
        _require(isinstance(raw_shares, dict) and len(raw_shares) == n)
        shares = {int(i): frost.check_element(bytes.fromhex(v), f"verifying share {i}") for i, v in raw_shares.items()}
        _require(sorted(shares) == list(range(1, n + 1)))
    except (KeyError, TypeError, ValueError, ThresholdError):
        raise KeyFileError(
            f"{where}: not a valid FROST key package (re-create it with `pykms threshold split`)"
        ) from None
    return frost.PublicKeyPackage(min_signers=t, group_public_key=group, verifying_shares=shares), n


def load_group_file(path: Path) -> frost.PublicKeyPackage:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such file (write it with `pykms threshold split`)") from None
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: cannot read the group file ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or doc.get("type") != GROUP_TYPE:
        raise KeyFileError(f"{path}: not a pykms FROST group file (type {GROUP_TYPE!r} expected)")
    return _parse_package(doc, str(path))[0]


def load_share_file(path: Path) -> tuple[frost.SecretShare, frost.PublicKeyPackage]:
    """Read one participant's share (permissions checked first) and check it matches its verifying share."""
    raw = read_secret_file(path)
    try:
        doc = json.loads(raw)
    except ValueError:
        raise KeyFileError(f"{path}: not a share file (invalid JSON)") from None
    if not isinstance(doc, dict) or doc.get("type") != SHARE_TYPE:
        raise KeyFileError(f"{path}: not a pykms FROST share file (type {SHARE_TYPE!r} expected)")
    package, n = _parse_package(doc, str(path))
    try:
        identifier = doc["identifier"]
        _require(type(identifier) is int and 1 <= identifier <= n)
        scalar = frost.check_scalar(bytes.fromhex(doc["signing_share"]), "signing_share")
    except (KeyError, TypeError, ValueError, ThresholdError):
        raise KeyFileError(f"{path}: malformed identifier or signing_share") from None
    share = frost.SecretShare(identifier, scalar)
    if frost.crypto_public(scalar) != package.verifying_shares[identifier]:
        raise KeyFileError(f"{path}: the signing share does not match its verifying share (corrupt share file)")
    return share, package


def _secret_scalar(key_path: Path) -> tuple[bytes, bytes]:
    """(secret scalar, public key) of a priv_validator_key.json or a softsign key file."""
    from pykms.providers.softsign import load_signing_key

    key = load_signing_key(key_path)
    if isinstance(key, SigningKey):
        return frost.secret_scalar_from_seed(bytes(key)), bytes(key.verify_key)
    # An expanded key (tmkms or YubiHSM export) already holds the clamped, reduced scalar.
    return key._scalar, key.public


def split_key_file(
    key_path: Path,
    out_dir: Path,
    threshold: int,
    participants: int,
    *,
    force: bool = False,
) -> tuple[frost.PublicKeyPackage, list[Path]]:
    """Write share-<i>.json (0600) for i in 1..n and group.json into ``out_dir``; nothing is overwritten."""
    if not 2 <= threshold <= participants <= MAX_PARTICIPANTS:
        raise ThresholdError(f"need 2 <= threshold <= participants <= {MAX_PARTICIPANTS}")
    # With t > n/2 two conflicting payloads would need 2t > n distinct cosigners.
    if 2 * threshold <= participants and not force:
        raise ThresholdError(
            f"threshold {threshold} of {participants} is not a majority: two disjoint groups of {threshold} "
            "cosigners could each sign one of two conflicting votes (each cosigner's guard stops only its own "
            f"share), so pykms wants threshold > participants/2 (here at least {participants // 2 + 1}); pass "
            "--force to accept the risk"
        )
    scalar, public = _secret_scalar(key_path)
    if frost.crypto_public(scalar) != public:
        raise KeyFileError(f"{key_path}: the secret does not match its public key")
    shares = frost.split_secret(scalar, threshold, participants)
    package = frost.public_key_package(shares, threshold, public)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    targets = [out_dir / f"share-{s.identifier}.json" for s in shares]
    group_path = out_dir / "group.json"
    for path in [*targets, group_path]:
        if path.exists():
            raise KeyFileError(f"{path}: already exists; refusing to overwrite key material")
    common = _package_json(package, participants)
    for share, path in zip(shares, targets, strict=True):
        doc = {"type": SHARE_TYPE, "identifier": share.identifier, **common, "signing_share": share.scalar.hex()}
        write_secret_file(path, json.dumps(doc, indent=1).encode() + b"\n")
    group_path.write_text(json.dumps({"type": GROUP_TYPE, **common}, indent=1) + "\n")
    return package, [*targets, group_path]
