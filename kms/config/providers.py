"""The ``[[providers.X]]`` sections, plugged in at one place: ``PROVIDERS`` maps each TOML section name to how its
table is read (at config load; the parser records in ``ctx.owners`` which chains each key is for, checked once:
one key per chain) and how its signers are built (``pykms.providers.registry.build_signers``).

A provider's own module (yubihsm, ledgerblue, PKCS#11 libraries) is imported only when its signers are built, never
at config load. A new provider: its config dataclass in model.py, a parser and a builder here, one entry in
``PROVIDERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from pykms.config.model import (
    DEFAULT_YUBIHSM_USB_TIMEOUT_MS,
    LedgerConfig,
    Pkcs11Config,
    Pkcs11Key,
    SoftsignConfig,
    YubihsmAdapter,
    YubihsmAuth,
    YubihsmConfig,
    YubihsmConnectorServer,
    YubihsmKey,
)
from pykms.config.reader import HEX_RE, Ctx, Table, check_host_port, no_clear_secret

if TYPE_CHECKING:
    from pykms.providers.signer import Signer

#: (chain ids, the signer holding their key) as built from one provider entry.
Built = list[tuple[tuple[str, ...], "Signer"]]


@dataclass(frozen=True)
class ProviderSection:
    """One kind of ``[[providers.X]]``."""

    #: The ``ProvidersConfig`` field its entries go to (``ledgertm`` and ``ledger`` share one).
    field: str
    #: The raw TOML table -> its config dataclass; errors name file, key and fix.
    parse: Callable[[Ctx, object, str], Any]
    #: The entry's signers; imports the provider's module (and its libraries) only now.
    build: Callable[[Any], Built]
    #: Drops entries given the whole section (softsign: account keys shadowed by a consensus key).
    keep: Callable[[Ctx, list[tuple[Any, str]]], list[tuple[Any, str]]] | None = None


def parse_softsign(ctx: Ctx, data: object, key: str) -> SoftsignConfig:
    t = Table(ctx, data, key, ("chain_ids", "key_type", "key_format", "path"))
    chain_ids = t.chain_ids()
    key_type = cast(Literal["consensus", "account"], t.choice("key_type", ("consensus", "account")) or "consensus")
    key_format = cast(Literal["base64", "raw", "json"] | None, t.choice("key_format", ("base64", "json", "raw")))
    path = t.path("path", required=True)
    assert path is not None
    t.done()
    return SoftsignConfig(chain_ids=chain_ids, key_type=key_type, key_format=key_format, path=path)


def parse_yubihsm(ctx: Ctx, data: object, key: str) -> YubihsmConfig:
    t = Table(ctx, data, key, ("adapter", "auth", "keys", "serial_number", "connector_server"))
    if not t.has("adapter"):
        raise ctx.error(t.sub("adapter"), "missing", 'add adapter = { type = "usb" } or { type = "http", addr = ... }')
    akey = t.sub("adapter")
    raw_adapter = t.raw("adapter")
    kind = Table(ctx, raw_adapter, akey, ("type",)).choice("type", ("usb", "http"), required=True)
    a = Table(ctx, raw_adapter, akey, ("type", "timeout_ms") if kind == "usb" else ("type", "addr"))
    a.raw("type")
    if kind == "usb":
        usb_timeout = a.int_("timeout_ms", lo=1, hi=600_000)
        adapter = YubihsmAdapter(type="usb", timeout_ms=usb_timeout or DEFAULT_YUBIHSM_USB_TIMEOUT_MS)
    else:
        connector = a.req_str("addr", 'add addr = "tcp://127.0.0.1:12345" (the yubihsm-connector)')
        check_host_port(ctx, f"{akey}.addr", connector, schemes=("tcp", "http"))
        adapter = YubihsmAdapter(type="http", addr=connector)
    a.done()

    if not t.has("auth"):
        raise ctx.error(t.sub("auth"), "missing", 'add auth = { key = 1, password_file = "secrets/yubihsm-password" }')
    u = Table(ctx, t.raw("auth"), t.sub("auth"), ("key", "password", "password_file"))
    auth_key = u.int_("key", lo=0, hi=0xFFFF, required=True, fix="add key = 1 (the auth key's object id)")
    assert auth_key is not None
    password = u._take("password", str, "a string", False, None)
    password_file = u.path("password_file")
    u.done()
    if (password is None) == (password_file is None):
        raise ctx.error(
            t.sub("auth"),
            "give exactly one of password_file and password",
            'use password_file = "secrets/yubihsm-password" (a 0600 file)',
        )
    if password is not None:
        ctx.warn(t.sub("auth.password"), "password in clear in the config file; prefer password_file (mode 0600)")

    keys: list[YubihsmKey] = []
    for index, raw_key in enumerate(t.table_list("keys")):
        kkey = f"{t.sub('keys')}[{index}]"
        k = Table(ctx, raw_key, kkey, ("chain_ids", "key", "type"))
        chain_ids = k.chain_ids()
        object_id = k.int_("key", lo=0, hi=0xFFFF, required=True, fix="add key = <object id of the signing key>")
        assert object_id is not None
        key_type = k.choice("type", ("consensus", "account")) or "consensus"
        k.done()
        if key_type == "account":
            ctx.warn(kkey, "account keys are not used by pykms (it signs consensus messages only); entry ignored")
            continue
        keys.append(YubihsmKey(chain_ids=list(chain_ids), key=object_id, type=key_type))
        ctx.owners.append((kkey, chain_ids))

    serial = t.str_("serial_number", fix='quote it: serial_number = "0123456789"')
    server: YubihsmConnectorServer | None = None
    if t.has("connector_server"):
        skey = t.sub("connector_server")
        s = Table(ctx, t.raw("connector_server"), skey, ("laddr", "cli"))
        laddr = s.req_str("laddr", 'add laddr = "tcp://127.0.0.1:12345"')
        check_host_port(ctx, f"{skey}.laddr", laddr, schemes=("tcp", "http"))
        cli: bool | None = None
        cli_auth_key: int | None = None
        if s.has("cli"):
            c = Table(ctx, s.raw("cli"), f"{skey}.cli", ("auth_key",))
            cli_auth_key = c.int_("auth_key", lo=0, hi=0xFFFF)
            c.done()
            cli = True
        s.done()
        server = YubihsmConnectorServer(laddr=laddr, cli=cli, cli_auth_key=cli_auth_key)
    t.done()
    return YubihsmConfig(
        adapter=adapter,
        auth=YubihsmAuth(key=auth_key, password=password, password_file=password_file),
        keys=keys,
        serial_number=serial,
        connector_server=server,
    )


def parse_ledger(ctx: Ctx, data: object, key: str) -> LedgerConfig:
    t = Table(ctx, data, key, ("chain_ids", "transport", "addr", "extensions_disabled"))
    chain_ids = t.chain_ids()
    transport = cast(Literal["hid", "tcp"], t.choice("transport", ("hid", "tcp")) or "hid")
    addr = t.str_("addr")
    extensions_disabled = t.bool_("extensions_disabled")
    t.done()
    if transport == "tcp":
        if addr is None:
            raise ctx.error(t.sub("addr"), "missing for transport = tcp", 'add addr = "127.0.0.1:9999"')
        check_host_port(ctx, t.sub("addr"), addr, schemes=("tcp",))
    elif addr is not None:
        raise ctx.error(t.sub("addr"), "only used with transport = tcp", 'remove addr or set transport = "tcp"')
    ctx.owners.append((key, chain_ids))
    return LedgerConfig(
        chain_ids=chain_ids, transport=transport, addr=addr, extensions_disabled=bool(extensions_disabled)
    )


def parse_pkcs11(ctx: Ctx, data: object, key: str) -> Pkcs11Config:
    known = ("module", "token_label", "slot", "user_pin_file", "user_pin_env", "keys")
    t = Table(ctx, data, key, known)
    for secret in ("user_pin", "pin"):
        no_clear_secret(t, secret, "user_pin_file", "user_pin_env")
    module = t.path("module", required=True)
    assert module is not None
    token_label = t.str_("token_label")
    slot = t.int_("slot", lo=0, hi=2**32 - 1)
    if token_label is None and slot is None:
        raise ctx.error(t.sub("token_label"), "missing: name the token", 'add token_label = "<label>" (or slot = N)')
    pin_file = t.path("user_pin_file")
    pin_env = t.str_("user_pin_env")
    if pin_file is not None and pin_env is not None:
        raise ctx.error(t.sub("user_pin_file"), "give only one of user_pin_file and user_pin_env", "remove one")
    keys: list[Pkcs11Key] = []
    for index, raw_key in enumerate(t.table_list("keys")):
        kkey = f"{t.sub('keys')}[{index}]"
        k = Table(ctx, raw_key, kkey, ("chain_ids", "label", "id"))
        chain_ids = k.chain_ids()
        label = k.str_("label")
        key_id = k.str_("id")
        k.done()
        if key_id is not None and not HEX_RE.fullmatch(key_id):
            raise ctx.error(f"{kkey}.id", f"{key_id!r} is not hex", 'write the CKA_ID as hex, e.g. id = "01"')
        if label is None and key_id is None:
            raise ctx.error(kkey, "name the key by label or id", 'add label = "<CKA_LABEL>" or id = "<hex CKA_ID>"')
        keys.append(Pkcs11Key(chain_ids=chain_ids, label=label, id=None if key_id is None else key_id.lower()))
        ctx.owners.append((kkey, chain_ids))
    t.done()
    if not keys:
        raise ctx.error(t.sub("keys"), "no keys", 'add keys = [{ chain_ids = ["<chain-id>"], label = "<label>" }]')
    return Pkcs11Config(
        module=module, token_label=token_label, slot=slot, user_pin_file=pin_file, user_pin_env=pin_env, keys=keys
    )


def _keep_softsign(ctx: Ctx, entries: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
    ed25519_chains = {c for soft, _key in entries if soft.key_type == "consensus" for c in soft.chain_ids}
    kept: list[tuple[Any, str]] = []
    for soft, key in entries:
        # tmkms (src/keyring.rs KeyRing::sign) signs with a chain's secp256k1 "account" key only when the chain
        # has no Ed25519 key: such an entry is kept (pykms.providers.secp256k1), a shadowed one dropped.
        if soft.key_type == "account" and set(soft.chain_ids) <= ed25519_chains:
            ctx.warn(
                key,
                "account keys are not used by pykms for a chain that has a consensus (Ed25519) key, as in tmkms; "
                "entry ignored",
            )
            continue
        kept.append((soft, key))
        ctx.owners.append((key, soft.chain_ids))
    return kept


def _build_softsign(cfg: SoftsignConfig) -> Built:
    from pykms.providers.secp256k1 import Secp256k1Signer
    from pykms.providers.softsign import SoftsignSigner

    signer = Secp256k1Signer.from_config(cfg) if cfg.key_type == "account" else SoftsignSigner.from_config(cfg)
    return [(cfg.chain_ids, signer)]


def _build_yubihsm(cfg: YubihsmConfig) -> Built:
    from pykms.providers.yubihsm import YubihsmSigner

    return [(tuple(key.chain_ids), YubihsmSigner.from_config(cfg, key)) for key in cfg.keys]


def _build_ledger(cfg: LedgerConfig) -> Built:
    from pykms.providers.ledger import LedgerSigner

    return [(cfg.chain_ids, LedgerSigner.from_config(cfg))]


def _build_pkcs11(cfg: Pkcs11Config) -> Built:
    from pykms.providers.pkcs11 import Pkcs11Signer

    return [(key.chain_ids, Pkcs11Signer.from_config(cfg, key)) for key in cfg.keys]


def _parse_threshold(ctx: Ctx, data: object, key: str) -> Any:
    from pykms.threshold.config import parse_threshold_provider

    cfg = parse_threshold_provider(ctx, data, key)
    ctx.owners.append((key, tuple(cfg.chain_ids)))
    return cfg


def _build_threshold(cfg: Any) -> Built:
    from pykms.providers.threshold import ThresholdSigner

    return [(tuple(cfg.chain_ids), ThresholdSigner.from_config(cfg))]


_LEDGER = ProviderSection("ledger", parse_ledger, _build_ledger)

#: TOML section name -> provider, in the order sections are read. ``ledgertm`` is tmkms's name, ``ledger`` an alias.
PROVIDERS: dict[str, ProviderSection] = {
    "softsign": ProviderSection("softsign", parse_softsign, _build_softsign, _keep_softsign),
    "yubihsm": ProviderSection("yubihsm", parse_yubihsm, _build_yubihsm),
    "ledgertm": _LEDGER,
    "ledger": _LEDGER,
    "pkcs11": ProviderSection("pkcs11", parse_pkcs11, _build_pkcs11),
    #: [pykms] FROST t-of-n cosigners (pykms.threshold.config.ThresholdConfig).
    "threshold": ProviderSection("threshold", _parse_threshold, _build_threshold),
}
