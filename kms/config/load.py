"""Reading a whole tmkms.toml: the sections in order, then the checks across them, then the I/O edge.

``parse_config(data, path)`` is a pure function over the dict tomllib produced; ``load_config`` finds and reads
the file. "One key per chain" is checked here, once, naming both provider entries.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pykms.config.model import CONFIG_ENV_VAR, CONFIG_FILE_NAME, ChainConfig, KmsConfig, ProvidersConfig
from pykms.config.providers import PROVIDERS
from pykms.config.reader import Ctx, Table, did_you_mean
from pykms.config.sections import parse_chain, parse_guard, parse_metrics, parse_validator
from pykms.errors import ConfigError
from pykms.keyholder.settings import parse_keyholder

__all__ = ["find_config_path", "load_config", "parse_config"]

#: The top-level tables; each new section (e.g. ``[keyholder]``) is read in ``parse_config`` and named here.
SECTIONS = ("chain", "validator", "providers", "guard", "metrics", "keyholder")


def _providers(ctx: Ctx, data: object) -> tuple[ProvidersConfig, list[tuple[str, str]]]:
    """Every ``[[providers.X]]`` through its ``PROVIDERS`` entry; also (chain id, dotted key) of each key."""
    t = Table(ctx, data, "providers", tuple(PROVIDERS))
    if t.has("fortanixdsm"):
        raise ctx.error(
            "providers.fortanixdsm",
            "the Fortanix DSM provider is not supported by pykms",
            "use softsign, yubihsm, ledgertm or pkcs11",
        )
    fields: dict[str, list[Any]] = {}
    owners: list[tuple[str, str]] = []
    for name, section in PROVIDERS.items():
        entries = [
            (section.parse(ctx, item, f"providers.{name}[{i}]"), f"providers.{name}[{i}]")
            for i, item in enumerate(t.table_list(name))
        ]
        if section.keep is not None:
            entries = section.keep(ctx, entries)
        fields.setdefault(section.field, []).extend(cfg for cfg, _key in entries)
        for cfg, key in entries:
            owners += [(chain_id, entry) for entry, chain_ids in section.keys(ctx, cfg, key) for chain_id in chain_ids]
    t.done()
    return ProvidersConfig(**fields), owners


def parse_config(data: Mapping[str, Any], path: Path) -> KmsConfig:
    """Validate a parsed tmkms.toml (the pure core of ``load_config``); ``path`` is for messages and paths."""
    ctx = Ctx(path)
    top = Table(ctx, dict(data), "", SECTIONS)
    chains = [parse_chain(ctx, item, f"chain[{i}]") for i, item in enumerate(top.table_list("chain"))]
    validators = [parse_validator(ctx, item, f"validator[{i}]") for i, item in enumerate(top.table_list("validator"))]
    providers, owners = _providers(ctx, top.raw("providers") or {})
    guard = parse_guard(ctx, top.raw("guard"), "guard") if top.has("guard") else None
    metrics = parse_metrics(ctx, top.raw("metrics"), "metrics") if top.has("metrics") else None
    keyholder = parse_keyholder(top.raw("keyholder"), path)
    top.done()

    chain_ids: list[str] = []
    for i, chain in enumerate(chains):
        if chain.id in chain_ids:
            raise ctx.error(f"chain[{i}].id", f"chain {chain.id!r} is configured twice", "keep one [[chain]] per id")
        chain_ids.append(chain.id)
    for i, validator in enumerate(validators):
        if validator.chain_id not in chain_ids:
            raise ctx.error(
                f"validator[{i}].chain_id",
                f"no [[chain]] with id {validator.chain_id!r}{did_you_mean(validator.chain_id, chain_ids)}",
                f'add a [[chain]] with id = "{validator.chain_id}" or correct the chain_id',
            )
    for chain_id, key in owners:
        if chain_id not in chain_ids:
            raise ctx.error(
                f"{key}.chain_ids",
                f"no [[chain]] with id {chain_id!r}{did_you_mean(chain_id, chain_ids)}",
                f'add a [[chain]] with id = "{chain_id}" or correct chain_ids',
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
