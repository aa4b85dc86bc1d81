"""Reading a whole tmkms.toml: ``parse_config`` (pure, over tomllib's dict) reads each top-level section and checks
across them ("one key per chain", once, naming both provider entries); ``load_config`` is the I/O edge.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, cast

from pykms.config.model import (
    CONFIG_ENV_VAR,
    CONFIG_FILE_NAME,
    DEFAULT_GUARD_TIMEOUT_MS,
    DEFAULT_PROTOCOL_VERSION,
    PROTOCOL_VERSIONS,
    ChainConfig,
    GuardConfig,
    KeyFormat,
    KmsConfig,
    MetricsConfig,
    ProtocolVersion,
    ProvidersConfig,
    ValidatorConfig,
)
from pykms.config.providers import PROVIDERS
from pykms.config.reader import (
    AddrError,
    Ctx,
    Table,
    check_chain_id,
    check_host_port,
    did_you_mean,
    no_clear_secret,
    parse_addr,
)
from pykms.errors import ConfigError
from pykms.keyholder.settings import parse_keyholder

#: Amino-era values older tmkms releases accepted (tmkms v0.10-v0.14 src/config/validator.rs).
_AMINO_PROTOCOL_VERSIONS = ("v0.33", "legacy")


def parse_key_format(ctx: Ctx, data: object, key: str) -> KeyFormat:
    if isinstance(data, str):
        # Not tmkms syntax, but an obvious shorthand for the two formats that take no options.
        if data in ("hex", "cosmos-json"):
            return KeyFormat(type=cast(Any, data))
        raise ctx.error(
            key,
            f"expected a table, found {data!r}",
            'write key_format = { type = "bech32", account_key_prefix = "cosmospub", '
            'consensus_key_prefix = "cosmosvalconspub" } or { type = "hex" }',
        )
    t = Table(ctx, data, key, ("type", "account_key_prefix", "consensus_key_prefix"))
    kind = t.choice("type", ("bech32", "cosmos-json", "hex"), required=True)
    if kind != "bech32":
        # tmkms's CosmosJson and Hex variants carry no fields and serde ignores extra ones: guides (Neutron's)
        # write { type = "cosmos-json", account_key_prefix = ..., consensus_key_prefix = ... }; accepted, unused.
        t.raw("account_key_prefix")
        t.raw("consensus_key_prefix")
        t.done()
        return KeyFormat(type=cast(Any, kind))
    account = t.req_str("account_key_prefix", 'add account_key_prefix = "cosmospub"')
    consensus = t.req_str("consensus_key_prefix", 'add consensus_key_prefix = "cosmosvalconspub"')
    for name, prefix in (("account_key_prefix", account), ("consensus_key_prefix", consensus)):
        if not all(33 <= ord(c) <= 126 for c in prefix) or prefix.lower() != prefix:
            raise ctx.error(f"{key}.{name}", f"{prefix!r} is not a valid bech32 prefix", "use lowercase ASCII")
    t.done()
    return KeyFormat(type="bech32", account_key_prefix=account, consensus_key_prefix=consensus)


_CHAIN_KEYS = (
    "id", "key_format", "sign_extensions", "state_file", "state_hook", "state_format", "audit_log", "audit_sync",
    "audit_rotate_bytes",
)  # fmt: skip


def parse_chain(ctx: Ctx, data: object, key: str) -> ChainConfig:
    t = Table(ctx, data, key, _CHAIN_KEYS)
    chain_id = t.req_str("id", 'add id = "<chain-id>"')
    check_chain_id(ctx, t.sub("id"), chain_id)
    if not t.has("key_format"):
        raise ctx.error(
            t.sub("key_format"),
            "missing",
            'add key_format = { type = "bech32", account_key_prefix = "cosmospub", '
            'consensus_key_prefix = "cosmosvalconspub" } (or { type = "hex" })',
        )
    key_format = parse_key_format(ctx, t.raw("key_format"), t.sub("key_format"))
    sign_extensions = t.bool_("sign_extensions")
    state_file = t.path("state_file")
    if t.has("state_hook"):
        hook = Table(ctx, t.raw("state_hook"), t.sub("state_hook"), ("cmd", "timeout_secs", "fail_closed"))
        hook.raw("cmd")
        hook.int_("timeout_secs", lo=0, hi=2**32)
        hook.bool_("fail_closed")
        hook.done()
        ctx.warn(
            t.sub("state_hook"),
            "ignored: pykms never guesses a starting height; it refuses to start without a state "
            "(run `pykms state import` with the node's priv_validator_state.json, which sets the guard to that "
            "state; or, only for a key that has never signed, `pykms state init`, which starts it at height 0)",
        )
    state_format = cast(Literal["auto", "json", "slots"], t.choice("state_format", ("auto", "json", "slots")) or "auto")
    audit_log = t.path("audit_log")
    audit_sync = cast(Literal["batch", "always"], t.choice("audit_sync", ("batch", "always")) or "batch")
    audit_rotate_bytes = t.int_("audit_rotate_bytes", lo=4096, hi=2**40)
    t.done()
    return ChainConfig(
        id=chain_id,
        key_format=key_format,
        state_file=state_file,
        state_format=state_format,
        sign_extensions=sign_extensions,
        audit_log=audit_log,
        audit_sync=audit_sync,
        audit_rotate_bytes=audit_rotate_bytes,
    )


_VALIDATOR_KEYS = ("addr", "chain_id", "reconnect", "timeout", "secret_key", "max_height", "protocol_version")


def parse_validator(ctx: Ctx, data: object, key: str) -> ValidatorConfig:
    t = Table(ctx, data, key, _VALIDATOR_KEYS)
    addr_text = t.req_str("addr", 'add addr = "tcp://NODE_ID@host:port" (the node\'s priv_validator_laddr)')
    try:
        addr = parse_addr(addr_text, base=ctx.base)
    except AddrError as exc:
        raise ctx.error(t.sub("addr"), exc.message, exc.fix) from None
    chain_id = t.req_str("chain_id", 'add chain_id = "<chain-id>"')
    reconnect = t.bool_("reconnect")
    timeout = t.int_("timeout", lo=1, hi=65535)  # tmkms: Option<u16> seconds
    secret_key = t.path("secret_key")
    max_height: int | None = None
    if t.has("max_height"):
        raw = t.raw("max_height")
        # tmkms's own example writes max_height = "500000" (a string); the tendermint Height type takes both.
        if isinstance(raw, str) and raw.isdigit():
            max_height = int(raw)
        elif isinstance(raw, int) and not isinstance(raw, bool):
            max_height = raw
        else:
            raise ctx.error(t.sub("max_height"), f"expected a height, found {raw!r}", "write max_height = 500000")
        if not 1 <= max_height < 2**63:
            raise ctx.error(t.sub("max_height"), f"{max_height} is out of range", "use a height in 1..2^63-1")
    version = DEFAULT_PROTOCOL_VERSION
    if t.has("protocol_version"):
        raw = t.raw("protocol_version")
        fix = "use one of " + ", ".join(PROTOCOL_VERSIONS) + " (the CometBFT version of the node)"
        if raw in _AMINO_PROTOCOL_VERSIONS:
            raise ctx.error(t.sub("protocol_version"), f"{raw!r} (Amino-era Tendermint) is not supported", fix)
        if not isinstance(raw, str) or raw not in PROTOCOL_VERSIONS:
            hint = did_you_mean(raw, PROTOCOL_VERSIONS) if isinstance(raw, str) else ""
            raise ctx.error(t.sub("protocol_version"), f"unknown protocol version {raw!r}{hint}", fix)
        version = cast(ProtocolVersion, raw)
    t.done()
    if addr.scheme == "tcp" and secret_key is None:
        raise ctx.error(
            t.sub("secret_key"),
            "missing: a tcp:// validator needs the SecretConnection identity key",
            'add secret_key = "secrets/kms-identity.key" (created by `pykms init`)',
        )
    if addr.scheme == "unix" and addr.path is not None:
        addr_text = str(addr)
    return ValidatorConfig(
        addr=addr_text,
        chain_id=chain_id,
        secret_key=secret_key,
        protocol_version=version,
        reconnect=True if reconnect is None else reconnect,
        max_height=max_height,
        timeout=timeout,
    )


def parse_guard(ctx: Ctx, data: object, key: str) -> GuardConfig:
    t = Table(ctx, data, key, ("backend", "dsn_file", "dsn_env", "timeout_ms"))
    no_clear_secret(t, "dsn", "dsn_file", "dsn_env")
    backend = cast(Literal["file", "postgres"], t.choice("backend", ("file", "postgres")) or "file")
    dsn_file = t.path("dsn_file")
    dsn_env = t.str_("dsn_env")
    timeout_ms = t.int_("timeout_ms", lo=1, hi=60_000)
    t.done()
    if backend == "postgres" and (dsn_file is None) == (dsn_env is None):
        raise ctx.error(
            t.sub("dsn_file"),
            "the postgres backend needs exactly one of dsn_file and dsn_env",
            'add dsn_file = "secrets/guard.dsn" (a 0600 file) or dsn_env = "PYKMS_GUARD_DSN"',
        )
    return GuardConfig(
        backend=backend, dsn_file=dsn_file, dsn_env=dsn_env, timeout_ms=timeout_ms or DEFAULT_GUARD_TIMEOUT_MS
    )


def parse_metrics(ctx: Ctx, data: object, key: str) -> MetricsConfig:
    t = Table(ctx, data, key, ("addr",))
    addr = t.req_str("addr", 'add addr = "127.0.0.1:9102"')
    check_host_port(ctx, t.sub("addr"), addr)
    t.done()
    return MetricsConfig(addr=addr)


def _providers(ctx: Ctx, data: object) -> ProvidersConfig:
    """Every ``[[providers.X]]`` through its ``PROVIDERS`` entry (the keys it holds go to ``ctx.owners``)."""
    t = Table(ctx, data, "providers", tuple(PROVIDERS))
    if t.has("fortanixdsm"):
        raise ctx.error(
            "providers.fortanixdsm",
            "the Fortanix DSM provider is not supported by pykms",
            "use softsign, yubihsm, ledgertm or pkcs11",
        )
    fields: dict[str, list[Any]] = {}
    for name, section in PROVIDERS.items():
        entries = [
            (section.parse(ctx, item, f"providers.{name}[{i}]"), f"providers.{name}[{i}]")
            for i, item in enumerate(t.table_list(name))
        ]
        if section.keep is not None:
            entries = section.keep(ctx, entries)
        fields.setdefault(section.field, []).extend(cfg for cfg, _key in entries)
    t.done()
    return ProvidersConfig(**fields)


def parse_config(data: Mapping[str, Any], path: Path) -> KmsConfig:
    """Validate a parsed tmkms.toml (the pure core of ``load_config``); ``path`` is for messages and paths."""
    ctx = Ctx(path)
    top = Table(ctx, dict(data), "", ("chain", "validator", "providers", "guard", "metrics", "keyholder"))
    chains = [parse_chain(ctx, item, f"chain[{i}]") for i, item in enumerate(top.table_list("chain"))]
    validators = [parse_validator(ctx, item, f"validator[{i}]") for i, item in enumerate(top.table_list("validator"))]
    providers = _providers(ctx, top.raw("providers") or {})
    guard = parse_guard(ctx, top.raw("guard"), "guard") if top.has("guard") else None
    metrics = parse_metrics(ctx, top.raw("metrics"), "metrics") if top.has("metrics") else None
    keyholder = parse_keyholder(top.raw("keyholder"), path)
    top.done()

    chain_ids: list[str] = []
    for i, chain in enumerate(chains):
        if chain.id in chain_ids:
            raise ctx.error(f"chain[{i}].id", f"chain {chain.id!r} is configured twice", "keep one [[chain]] per id")
        chain_ids.append(chain.id)
    owners = [(chain_id, key) for key, ids in ctx.owners for chain_id in ids]
    # (where the chain is named, its id, what to correct) for every reference to a [[chain]]
    references = [(f"validator[{i}].chain_id", v.chain_id, "the chain_id") for i, v in enumerate(validators)]
    references += [(f"{key}.chain_ids", chain_id, "chain_ids") for chain_id, key in owners]
    for where, chain_id, field in references:
        if chain_id not in chain_ids:
            raise ctx.error(
                where,
                f"no [[chain]] with id {chain_id!r}{did_you_mean(chain_id, chain_ids)}",
                f'add a [[chain]] with id = "{chain_id}" or correct {field}',
            )
    served = {v.chain_id for v in validators}
    kept: list[ChainConfig] = []
    for i, chain in enumerate(chains):
        mine = [key for chain_id, key in owners if chain_id == chain.id]
        if not mine and chain.id not in served:
            # tmkms's own example lists chains without keys; such a chain can do nothing, so it is left out
            # (the runtime opens a key and a state for every chain it is given).
            ctx.warn(f"chain[{i}]", f"chain {chain.id!r} has no key and no [[validator]]; ignored")
            continue
        if not mine:
            raise ctx.error(
                f"chain[{i}]",
                f"no consensus key for chain {chain.id!r}",
                f'add chain_ids = ["{chain.id}"] to one [[providers.*]] entry',
            )
        if len(mine) > 1:
            raise ctx.error(
                f"{mine[1]}.chain_ids",
                f"chain {chain.id!r} has a consensus key in {len(mine)} provider entries ({', '.join(mine)})",
                f"keep exactly one key per chain: remove {chain.id!r} from the chain_ids of all but one of them",
            )
        kept.append(chain)
    return KmsConfig(
        path=path,
        chains=kept,
        validators=validators,
        providers=providers,
        guard=guard,
        metrics=metrics,
        warnings=tuple(ctx.warnings),
        keyholder=keyholder,
    )


# --------------------------------------------------------------------------------------------------------------
# I/O edge


def find_config_path(path: Path | None, *, environ: Mapping[str, str] | None = None) -> Path:
    """``-c`` path, else $TMKMS_CONFIG_FILE, else ./tmkms.toml (tmkms's order)."""
    env = os.environ if environ is None else environ
    if path is not None:
        return path
    if env.get(CONFIG_ENV_VAR):
        return Path(env[CONFIG_ENV_VAR])
    return Path(CONFIG_FILE_NAME)


def load_config(path: Path | None, *, log: Callable[..., Any] | None = None) -> KmsConfig:
    """Find, read and validate the config file; warnings are logged as ``config_warning`` events."""
    config_path = find_config_path(path)
    try:
        raw = config_path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "no such file",
            file=str(config_path),
            fix=f"pass -c /path/to/{CONFIG_FILE_NAME}, set {CONFIG_ENV_VAR}, or create one with `pykms init`",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read ({exc.strerror})", file=str(config_path)) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("not UTF-8 text", file=str(config_path), fix="save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=str(config_path), fix="correct the TOML syntax") from None
    config = parse_config(data, config_path.absolute())
    if config.warnings:
        if log is None:
            from pykms.logconfig import get_logger

            log = get_logger("pykms.config").warning
        for warning in config.warnings:
            log("config_warning", detail=warning)
    return config
