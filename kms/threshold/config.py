"""cosigner.toml -> a frozen dataclass, with tmkms.toml's strictness (unknown keys refused, file/key/fix named).

Example::

    listen_addr = "tcp://127.0.0.1:27001"
    share_file = "secrets/share-1.json"        # from `pykms threshold split`, mode 0600
    secret_key = "secrets/cosigner-identity.key"  # this cosigner's SecretConnection identity
    # Node IDs of the signer instances allowed to ask (`pykms threshold peer-id <their secret_key>`).
    allowed_signers = ["0123...abcd"]

    [[chain]]
    id = "cosmoshub-4"
    state_file = "state/cosmoshub-4_cosigner_state.json"
    state_format = "json"                      # optional; by default an existing file keeps its format, new is slots
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from pykms.config.reader import PEER_ID_RE, Ctx, Table, ValidatorAddr, parse_addr
from pykms.errors import ConfigError

__all__ = ["CosignerChain", "CosignerConfig", "load_cosigner_config", "parse_cosigner_config"]


@dataclass(frozen=True)
class CosignerChain:
    id: str
    state_file: Path
    #: As in tmkms.toml's [[chain]]: CometBFT's JSON (default) or the two-slot file (one fdatasync per share).
    state_format: Literal["auto", "json", "slots"] = "auto"


@dataclass(frozen=True)
class CosignerConfig:
    path: Path
    listen_addr: ValidatorAddr
    share_file: Path
    secret_key: Path
    allowed_signers: tuple[str, ...]
    chains: tuple[CosignerChain, ...]


def parse_cosigner_config(data: Mapping[str, Any], path: Path) -> CosignerConfig:
    ctx = Ctx(path)
    top = Table(ctx, dict(data), "", ("listen_addr", "share_file", "secret_key", "allowed_signers", "chain"))
    listen = top.req_str("listen_addr", 'add listen_addr = "tcp://127.0.0.1:27001"')
    try:
        addr = parse_addr(listen)
    except ConfigError as exc:
        raise ctx.error("listen_addr", str(exc), 'write "tcp://host:port"') from None
    if addr.scheme != "tcp" or addr.peer_id is not None:
        raise ctx.error("listen_addr", "a cosigner listens on tcp://host:port", 'write "tcp://0.0.0.0:27001"')
    share_file = top.path("share_file", required=True)
    secret_key = top.path("secret_key", required=True)
    assert share_file is not None and secret_key is not None
    fix = 'list the signers\' node IDs: allowed_signers = ["<40 hex>"] (`pykms threshold peer-id KEYFILE`)'
    raw_allowed = top.raw("allowed_signers")
    raw_chains = top.table_list("chain")
    top.done()  # an unknown (misspelt) key first: its did-you-mean is the useful message
    if not isinstance(raw_allowed, list) or not raw_allowed:
        raise ctx.error("allowed_signers", "missing or empty: a cosigner serves only pinned signers", fix)
    allowed: list[str] = []
    for i, item in enumerate(raw_allowed):
        if not isinstance(item, str) or not PEER_ID_RE.fullmatch(item):
            raise ctx.error(f"allowed_signers[{i}]", f"{item!r} is not a 40-hex node ID", fix)
        allowed.append(item.lower())
    chains: list[CosignerChain] = []
    for i, raw in enumerate(raw_chains):
        c = Table(ctx, raw, f"chain[{i}]", ("id", "state_file", "state_format"))
        chain_id = c.req_str("id", 'add id = "<chain-id>"')
        state_file = c.path("state_file", required=True)
        state_format = cast(
            Literal["auto", "json", "slots"], c.choice("state_format", ("auto", "json", "slots")) or "auto"
        )
        assert state_file is not None
        c.done()
        if any(chain.id == chain_id for chain in chains):
            raise ctx.error(f"chain[{i}].id", f"chain {chain_id!r} is listed twice", "keep one [[chain]] per id")
        chains.append(CosignerChain(chain_id, state_file, state_format))
    if not chains:
        raise ctx.error("chain", "no chain", 'add [[chain]] with id = "<chain-id>" and state_file = "<path>"')
    return CosignerConfig(path, addr, share_file, secret_key, tuple(allowed), tuple(chains))


def load_cosigner_config(path: Path) -> CosignerConfig:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ConfigError("no such file", file=str(path), fix="pass -c /path/to/cosigner.toml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read ({exc.__class__.__name__})", file=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=str(path), fix="correct the TOML syntax") from None
    return parse_cosigner_config(data, path.absolute())


# --------------------------------------------------------------------------------------------------------------
# [[providers.threshold]] in tmkms.toml (parsed here, called from pykms.config)

#: Whole FROST exchange budget per signature: CometBFT's privval read/write deadline is 5 s
#: (signer_endpoint.go defaultTimeoutReadWriteSeconds), which must also cover the guard's flush and the reply.
DEFAULT_THRESHOLD_TIMEOUT_MS = 2000
#: After a failure a cosigner is asked again only when the others cannot make t, or after this long.
DEFAULT_RETRY_AFTER_MS = 1000


@dataclass(frozen=True)
class ThresholdCosignerAddr:
    addr: str
    host: str
    port: int
    #: The cosigner's node ID (of its secret_key): the SecretConnection handshake refuses any other key.
    peer_id: str


@dataclass(frozen=True)
class ThresholdConfig:
    """One ``[[providers.threshold]]``: a FROST group key signed by t of n cosigners."""

    chain_ids: tuple[str, ...]
    threshold: int
    group_file: Path
    secret_key: Path
    cosigners: tuple[ThresholdCosignerAddr, ...]
    timeout_ms: int = DEFAULT_THRESHOLD_TIMEOUT_MS
    retry_after_ms: int = DEFAULT_RETRY_AFTER_MS


def parse_threshold_provider(ctx: Ctx, data: object, key: str) -> ThresholdConfig:
    known = ("chain_ids", "threshold", "group_file", "secret_key", "cosigners", "timeout_ms", "retry_after_ms")
    t = Table(ctx, data, key, known)
    chain_ids = t.chain_ids()
    threshold = t.int_("threshold", lo=2, hi=255, required=True, fix="add threshold = <t> (as given to split)")
    group_file = t.path("group_file", required=True)
    secret_key = t.path("secret_key", required=True)
    timeout_ms = t.int_("timeout_ms", lo=10, hi=4500) or DEFAULT_THRESHOLD_TIMEOUT_MS
    retry_after_ms = t.int_("retry_after_ms", lo=0, hi=600_000)
    cosigners: list[ThresholdCosignerAddr] = []
    fix = 'add cosigners = [{ addr = "tcp://<cosigner node id>@host:port" }, ...] (one per share)'
    for i, raw in enumerate(t.table_list("cosigners")):
        ckey = f"{t.sub('cosigners')}[{i}]"
        c = Table(ctx, raw, ckey, ("addr",))
        addr = c.req_str("addr", fix)
        c.done()
        try:
            parsed = parse_addr(addr)
        except ConfigError as exc:
            raise ctx.error(f"{ckey}.addr", str(exc), fix) from None
        if parsed.scheme != "tcp" or parsed.peer_id is None or parsed.host is None or parsed.port is None:
            raise ctx.error(
                f"{ckey}.addr", "a cosigner is pinned by its node ID: tcp://ID@host:port", "`pykms threshold peer-id`"
            )
        cosigners.append(ThresholdCosignerAddr(addr, parsed.host, parsed.port, parsed.peer_id))
    t.done()
    assert threshold is not None and group_file is not None and secret_key is not None
    if len(cosigners) < threshold:
        raise ctx.error(t.sub("cosigners"), f"{len(cosigners)} cosigners for threshold {threshold}", fix)
    return ThresholdConfig(
        chain_ids=chain_ids,
        threshold=threshold,
        group_file=group_file,
        secret_key=secret_key,
        cosigners=tuple(cosigners),
        timeout_ms=timeout_ms,
        retry_after_ms=DEFAULT_RETRY_AFTER_MS if retry_after_ms is None else retry_after_ms,
    )
