"""``pykms yubihsm detect|setup|keys|test``: YubiHSM2 management, as tmkms's ``tmkms yubihsm`` commands.

Every command reads the connection settings (adapter, auth, serial_number) from the first
``[[providers.yubihsm]]`` section of ``-c FILE``; ``--auth-key``/``--password-file`` override the credentials
(key management needs the admin or operator key, while the provider normally uses the validator key). When the
section has ``connector_server = { laddr = ..., cli = { auth_key = N } }`` the commands go through that server,
so they work while ``pykms start`` holds the device.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import getpass
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pykms.config import KeyFormat, find_config_path, load_config
from pykms.errors import ConfigError, FatalProviderError, KeyFileError
from pykms.keyfiles import read_secret_file, write_secret_file

__all__ = ["register"]

#: tmkms keys.rs: DEFAULT_DOMAINS = DOM1, DEFAULT_CAPABILITIES = SIGN_EDDSA (pykms adds EXPORTABLE_UNDER_WRAP
#: unless --non-exportable), DEFAULT_WRAP_KEY = 1.
DEFAULT_DOMAINS = 0x0001
DEFAULT_WRAP_KEY = 1


def _key_id(text: str) -> int:
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a key id: {text!r} (a number 1-65535, decimal or 0x hex)") from None
    if not 1 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"key id {value} out of range 1-65535")
    return value


def register(sub: Any) -> None:
    group = sub.add_parser("yubihsm", help="YubiHSM2 management (detect, setup, keys, test)")
    cmds = group.add_subparsers(dest="yubihsm_cmd", metavar="CMD")

    def command(parent: Any, name: str, func: Callable[[argparse.Namespace], int], help: str) -> Any:
        """A subcommand with the options every one of them takes."""
        p = parent.add_parser(name, help=help)
        p.add_argument("-c", "--config", type=Path, default=None, help="path to tmkms.toml")
        p.add_argument("--auth-key", type=_key_id, default=None, help="authentication key id (overrides config)")
        p.add_argument("--password-file", type=Path, default=None, help="password file for --auth-key")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging (tmkms's -v)")
        p.set_defaults(func=func)
        return p

    detect_help = "show the YubiHSM2 behind the configured adapter; without a config, scan USB (as tmkms)"
    command(cmds, "detect", cmd_detect, detect_help)

    p = command(cmds, "setup", cmd_setup, "factory-reset and provision the YubiHSM2 from a 24-word mnemonic")
    p.add_argument("-r", "--restore", action="store_true", help="restore from an existing 24-word mnemonic")
    p.add_argument("-p", "--print-only", action="store_true", help="print the derived keys only, change nothing")
    p.add_argument("-w", "--write-report", type=Path, default=None, help="write the provisioning report (JSON)")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    keys = cmds.add_parser("keys", help="manage Ed25519 keys in the HSM").add_subparsers(dest="keys_cmd", metavar="CMD")
    p = command(keys, "generate", cmd_keys_generate, "generate an Ed25519 key inside the HSM")
    p.add_argument("key_id", type=_key_id)
    p.add_argument("-l", "--label", default=None)
    p.add_argument("-p", "--prefix", default=None, help="bech32 prefix to show the key with (and label it)")
    p.add_argument("-t", dest="key_type", choices=("consensus", "account"), default="consensus",
                   help="consensus (Ed25519, default); account keys are not kept in a YubiHSM by pykms")  # fmt: skip
    p.add_argument("-b", "--backup", type=Path, default=None, help="write an encrypted (wrapped) backup here")
    p.add_argument("-w", "--wrapkey", type=_key_id, default=DEFAULT_WRAP_KEY, help="wrap key id (default 1)")
    p.add_argument("--non-exportable", action="store_true", help="the key can never be exported, not even wrapped")

    command(keys, "list", cmd_keys_list, "list the Ed25519 keys in the HSM")

    p = command(keys, "import", cmd_keys_import, "import priv_validator_key.json, a base64 seed, or a wrapped backup")
    p.add_argument("-t", "--type", choices=("json", "base64", "wrapped", "wrap"), default=None)
    p.add_argument("-i", "--id", type=_key_id, default=None, dest="key_id", help="key id (json/base64)")
    p.add_argument("-l", "--label", default="")
    p.add_argument("-w", "--wrapkey", type=_key_id, default=DEFAULT_WRAP_KEY)
    p.add_argument("path", type=Path)

    p = command(keys, "export", cmd_keys_export, "export a key wrapped under a wrap key (encrypted backup)")
    p.add_argument("-i", "--id", type=_key_id, required=True, dest="key_id")
    p.add_argument("-w", "--wrapkey", type=_key_id, default=DEFAULT_WRAP_KEY)
    p.add_argument("path", type=Path)

    p = command(keys, "delete", cmd_keys_delete, "delete a key from the HSM (needs an admin key)")
    p.add_argument("-i", "--id", type=_key_id, required=True, dest="key_id")

    p = command(cmds, "test", cmd_test, "sign in a loop with a key and print the rate and latency")
    p.add_argument("key_id", type=_key_id)
    p.add_argument("-n", "--count", type=int, default=100, help="number of signatures (default 100)")


# ---- connection --------------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> tuple[str, int, str, str | None]:
    """(url, auth key id, password, serial) from the config and the overrides."""
    from pykms.providers.yubihsm import adapter_url, read_password

    if args.verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)  # python-yubihsm's own debug lines
    cfg = load_config(args.config)
    if not cfg.providers.yubihsm:
        raise ConfigError(
            "no [[providers.yubihsm]] section", file=str(cfg.path), fix="add one (see tmkms.toml.example)"
        )
    hsm = cfg.providers.yubihsm[0]
    url = adapter_url(hsm.adapter.type, hsm.adapter.addr, hsm.serial_number, timeout_ms=hsm.adapter.timeout_ms)
    auth_key = hsm.auth.key
    server = hsm.connector_server
    if server is not None and server.cli:
        url = adapter_url("http", server.laddr)
        if server.cli_auth_key is not None:
            auth_key = server.cli_auth_key
    if args.auth_key is not None:
        auth_key = args.auth_key
    if args.password_file is not None:
        password = read_password(None, args.password_file)
    elif args.auth_key is not None:
        password = getpass.getpass(f"password for authentication key 0x{auth_key:04x}: ")
    else:
        password = read_password(hsm.auth.password, hsm.auth.password_file)
    return url, auth_key, password, hsm.serial_number


@contextlib.contextmanager
def _session(args: argparse.Namespace, what: str, key_id: int | None = None) -> Iterator[tuple[Any, Any]]:
    """``(YubiHsm, AuthSession)``; a device error inside the block becomes our error, naming ``what``."""
    from pykms.providers.yubihsm import close_session, device_errors, open_session

    url, auth_key, password, serial = _settings(args)
    backend, hsm, session = open_session(url, auth_key, password, serial_number=serial, what=what)
    try:
        with device_errors(what, auth_key, key_id):
            yield hsm, session
    finally:
        close_session(session, backend)


# ---- commands ----------------------------------------------------------------------------------------------


def _scan_usb() -> int:
    """tmkms's ``yubihsm detect``: list the YubiHSM2 devices on USB (vendor 0x1050, product 0x0030)."""
    from pykms.providers.yubihsm import usb_devices

    devices = usb_devices()
    if not devices:
        raise FatalProviderError(
            "no YubiHSM found on USB (fix: plug the YubiHSM 2 in and check that this user may open it, "
            "a udev rule for USB ID 1050:0030; or pass -c tmkms.toml to query the configured connector)"
        )
    print("Detected YubiHSM2 USB devices:")
    for serial, bus in devices:
        print(f"- Serial #{serial} (bus {bus})")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from yubihsm.core import YubiHsm

    from pykms.providers.yubihsm import device_errors, make_backend

    if args.config is None and not find_config_path(None).exists():
        return _scan_usb()
    url, auth_key, _password, _serial = _settings(args)
    backend = make_backend(url)
    try:
        with device_errors(f"yubihsm detect ({url})", auth_key):
            info = YubiHsm(backend).get_device_info()
    finally:
        backend.close()
    version = ".".join(str(v) for v in info.version)
    print(f"YubiHSM2 at {url}: serial {info.serial}, firmware {version}, part {info.part_number or '-'}")
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    from pykms.providers import yubihsm_setup as setup

    url, auth_key, password, _serial = _settings(args)
    if args.restore:
        print("Restoring and reprovisioning the YubiHSM from an existing 24-word mnemonic.")
        phrase = getpass.getpass("*** Enter mnemonic (separate words with spaces): ") if sys.stdin.isatty() else ""
        if not phrase:
            phrase = sys.stdin.readline()
        entropy = setup.mnemonic_to_entropy(phrase)
        print("Mnemonic phrase decoded and checksummed successfully.")
    else:
        with _session(args, "yubihsm setup: device randomness") as (_hsm, session):
            device_random = bytes(session.get_pseudo_random(32))
        entropy = setup.new_mnemonic_entropy(device_random)
    plan = setup.plan_from_entropy(entropy)
    words = plan.mnemonic.split()
    if args.print_only:
        print("Keys and passwords derived from the 24-word admin mnemonic:")
    else:
        print(f"This will ERASE the YubiHSM2 at {url} and reinitialize it.")
        print("Authentication keys with these ids and passwords will be created:")
    print()
    print("- authkey 0x0001 [admin]: the 24-word mnemonic:")
    print("    " + " ".join(words[:12]))
    print("    " + " ".join(words[12:]))
    for role in plan.roles[1:]:
        print(f"- authkey 0x{role.key_id:04x} [{role.name}]: {role.password}")
    print(f"- wrapkey 0x{setup.WRAP_KEY_ID:04x} [primary]: {plan.wrap_key.hex()}")
    print()
    if args.print_only:
        return 0
    if not args.yes:
        answer = input("*** Are you SURE you want to erase and reinitialize this HSM? (y/N): ")
        if answer.strip().lower() != "y":
            print("Aborted; nothing was changed.")
            return 8
    report = setup.provision(url, auth_key, password, plan)
    print(f"Reinitialized YubiHSM (serial {report['serial_number']}).")
    if args.write_report is not None:
        try:
            args.write_report.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise KeyFileError(f"{args.write_report}: cannot write the report ({exc.strerror})") from None
        print(f"Wrote provisioning report to {args.write_report}")
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from yubihsm.defs import ALGORITHM, CAPABILITY
    from yubihsm.objects import AsymmetricKey

    if args.key_type == "account":
        print(
            "error: -t account: pykms keeps only consensus (Ed25519) keys in a YubiHSM; an account key signs "
            "nothing pykms serves (use -t consensus, or generate account keys with yubihsm-shell)",
            file=sys.stderr,
        )
        return 2
    from pykms.keyring import format_public_key
    from pykms.providers.yubihsm import raw_public_key

    capabilities = CAPABILITY.SIGN_EDDSA
    if not args.non_exportable:
        capabilities |= CAPABILITY.EXPORTABLE_UNDER_WRAP
    # tmkms: the label defaults to "<prefix>:<time>" with -p, else "<key type>:<time>".
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    label = args.label if args.label is not None else f"{args.prefix or 'consensus'}:{now}"
    if len(label.encode()) > 40:
        raise ConfigError(f"label {label!r} is longer than 40 bytes", fix="use a shorter --label")
    if args.backup is not None and args.backup.exists():
        # Checked before generating, so a key never exists without the backup the operator asked for.
        raise KeyFileError(f"{args.backup}: already exists; refusing to overwrite a backup")
    with _session(args, f"generate key 0x{args.key_id:04x}", args.key_id) as (_hsm, session):
        key = AsymmetricKey.generate(session, args.key_id, label, DEFAULT_DOMAINS, capabilities, ALGORITHM.EC_ED25519)
        pub = raw_public_key(key)
    shown = format_public_key(pub, KeyFormat("bech32", args.prefix, args.prefix)) if args.prefix else None
    print(f"Generated consensus (ed25519) key 0x{args.key_id:04x}: {shown or pub.hex().upper()}")
    if args.backup is not None:
        _export(args, args.key_id, args.wrapkey, args.backup)
    return 0


def _export(args: argparse.Namespace, key_id: int, wrap_id: int, path: Path) -> None:
    from yubihsm.defs import OBJECT

    with _session(args, f"export key 0x{key_id:04x} under wrap key 0x{wrap_id:04x}", key_id) as (_hsm, session):
        wrap = session.get_object(wrap_id, OBJECT.WRAP_KEY)
        blob = wrap.export_wrapped(session.get_object(key_id, OBJECT.ASYMMETRIC_KEY))
    write_secret_file(path, base64.b64encode(bytes(blob)) + b"\n")
    print(f"Wrote backup of key 0x{key_id:04x} (encrypted under wrap key 0x{wrap_id:04x}) to {path}")


def cmd_keys_list(args: argparse.Namespace) -> int:
    from yubihsm.defs import ALGORITHM, OBJECT

    from pykms.keyring import format_public_key
    from pykms.providers.yubihsm import raw_public_key

    formats = _key_formats(args)
    with _session(args, "yubihsm keys list") as (hsm, session):
        objects = session.list_objects(object_type=OBJECT.ASYMMETRIC_KEY, algorithm=ALGORITHM.EC_ED25519)
        serial = hsm.get_device_info().serial
        if not objects:
            print(f"No Ed25519 keys found in YubiHSM #{serial}.")
        else:
            print(f"Listing keys in YubiHSM #{serial}:")
        # tmkms's listing: the key in its chain's key_format when the key serves exactly one chain, else hex.
        for obj in sorted(objects, key=lambda o: o.id):
            info = obj.get_info()
            pub = raw_public_key(obj)
            label = info.label if isinstance(info.label, str) else info.label.hex()
            key_format = formats.get(obj.id)
            shown = format_public_key(pub, key_format) if key_format is not None else pub.hex().upper()
            print(f"- 0x{obj.id:04x} [cons] {shown}")
            print(f'   label: "{label}"  domains: 0x{info.domains:04x}  hex: {pub.hex().upper()}')
    return 0


def _key_formats(args: argparse.Namespace) -> dict[int, KeyFormat]:
    """Key id -> its chain's KeyFormat, for keys configured for exactly one chain (tmkms load_key_formatters)."""
    cfg = load_config(args.config)
    by_chain = {chain.id: chain.key_format for chain in cfg.chains}
    formats: dict[int, KeyFormat] = {}
    for hsm in cfg.providers.yubihsm[:1]:
        for key in hsm.keys:
            if len(key.chain_ids) == 1 and key.chain_ids[0] in by_chain:
                formats[key.key] = by_chain[key.chain_ids[0]]
    return formats


def parse_key_file(kind: str, raw: bytes, source: Path) -> bytes:
    """A json or base64 key file -> the 32-byte Ed25519 seed. Refuses anything malformed; names the problem."""
    from nacl.signing import SigningKey

    def fail(why: str) -> KeyFileError:
        return KeyFileError(f"{source}: {why}")

    if kind == "json":
        try:
            doc = json.loads(raw)
            priv = doc["priv_key"]
            key_type, value = priv["type"], priv["value"]
        except (ValueError, KeyError, TypeError):
            raise fail("not a priv_validator_key.json (expected priv_key.type and priv_key.value)") from None
        if key_type != "tendermint/PrivKeyEd25519":
            raise fail(f"priv_key.type is {key_type!r}; only tendermint/PrivKeyEd25519 can be imported") from None
        try:
            keypair = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise fail("priv_key.value is not base64") from None
        if len(keypair) != 64:
            raise fail(f"priv_key.value holds {len(keypair)} bytes, expected 64 (seed and public key)")
        seed = keypair[:32]
        if bytes(SigningKey(seed).verify_key) != keypair[32:]:
            raise fail("priv_key.value: the public half does not match the seed (corrupt file)")
        pub_key = doc.get("pub_key", {}) if isinstance(doc, dict) else {}
        if isinstance(pub_key, dict) and "value" in pub_key:
            try:
                declared = base64.b64decode(str(pub_key["value"]), validate=True)
            except (binascii.Error, ValueError):
                raise fail("pub_key.value is not base64") from None
            if declared != keypair[32:]:
                raise fail("pub_key.value does not match priv_key.value (corrupt file)")
        return seed
    try:
        decoded = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise fail("not base64") from None
    if len(decoded) == 64 and bytes(SigningKey(decoded[:32]).verify_key) == decoded[32:]:
        return decoded[:32]
    if len(decoded) != 32:
        raise fail(f"holds {len(decoded)} bytes; an Ed25519 seed is 32 bytes")
    return decoded


def cmd_keys_import(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from yubihsm.defs import CAPABILITY, OBJECT
    from yubihsm.objects import AsymmetricKey

    from pykms.providers.yubihsm import raw_public_key

    raw = read_secret_file(args.path)
    kind = args.type or ("json" if args.path.name.endswith(".json") else "wrapped")
    # Everything is parsed and checked before the device is touched: a bad file writes nothing.
    if kind in ("wrapped", "wrap"):
        try:
            blob = base64.b64decode(raw.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{args.path}: not a base64 wrapped backup") from None
        if len(blob) < 13 + 16 + 1:
            raise KeyFileError(f"{args.path}: too short to be a wrapped backup ({len(blob)} bytes)")
        what = f"import wrapped backup {args.path} with wrap key 0x{args.wrapkey:04x}"
        with _session(args, what) as (_hsm, session):
            obj = session.get_object(args.wrapkey, OBJECT.WRAP_KEY).import_wrapped(blob)
            if obj.object_type == OBJECT.ASYMMETRIC_KEY:
                print(f"Imported key 0x{obj.id:04x}: {raw_public_key(obj).hex().upper()}")
            else:
                print(f"Imported object 0x{obj.id:04x} ({obj.object_type!s})")
        return 0
    if args.key_id is None:
        raise ConfigError("no key id given", fix=f"pass -i ID, e.g. pykms yubihsm keys import -i 1 {args.path}")
    private = Ed25519PrivateKey.from_private_bytes(parse_key_file(kind, raw, args.path))
    with _session(args, f"import key 0x{args.key_id:04x}", args.key_id) as (_hsm, session):
        key = AsymmetricKey.put(
            session,
            args.key_id,
            args.label,
            DEFAULT_DOMAINS,
            CAPABILITY.SIGN_EDDSA | CAPABILITY.EXPORTABLE_UNDER_WRAP,
            private,
        )
        pub = raw_public_key(key)
    print(f"Imported key 0x{args.key_id:04x}: {pub.hex().upper()}")
    return 0


def cmd_keys_export(args: argparse.Namespace) -> int:
    if args.path.exists():
        raise KeyFileError(f"{args.path}: already exists; refusing to overwrite a backup")
    _export(args, args.key_id, args.wrapkey, args.path)
    return 0


def cmd_keys_delete(args: argparse.Namespace) -> int:
    from yubihsm.defs import OBJECT

    with _session(args, f"delete key 0x{args.key_id:04x}", args.key_id) as (_hsm, session):
        session.get_object(args.key_id, OBJECT.ASYMMETRIC_KEY).delete()
    print(f"Deleted key 0x{args.key_id:04x}")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from pykms.providers.yubihsm import YubihsmSigner

    if args.count < 1:
        raise ConfigError("--count must be at least 1")
    url, auth_key, password, serial = _settings(args)
    signer = YubihsmSigner(url, auth_key, password, args.key_id, serial_number=serial)
    latencies: list[float] = []
    try:
        start = time.perf_counter()
        for i in range(args.count):
            t0 = time.perf_counter()
            signer.sign(b"pykms yubihsm test %d" % i)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
    finally:
        signer.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(
        f"signed {args.count} messages with key 0x{args.key_id:04x} in {elapsed:.3f} s: "
        f"{args.count / elapsed:.1f} signatures/s, p50 {statistics.median(latencies) * 1e3:.2f} ms, "
        f"p99 {p99 * 1e3:.2f} ms, max {latencies[-1] * 1e3:.2f} ms (every signature verified)"
    )
    return 0
