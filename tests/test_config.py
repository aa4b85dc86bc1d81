"""tmkms.toml loading: tmkms's own files load unchanged; every refusal names file, key and fix."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from pykms.config import (
    CONFIG_ENV_VAR,
    KeyFormat,
    ValidatorAddr,
    find_config_path,
    load_config,
    parse_addr,
    parse_config,
)
from pykms.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tmkms"
EXAMPLE = REPO / "config" / "tmkms.toml.example"

BASE = """
[[chain]]
id = "test-chain"
key_format = { type = "hex" }

[[validator]]
addr = "tcp://127.0.0.1:26659"
chain_id = "test-chain"
secret_key = "secrets/kms-identity.key"

[[providers.softsign]]
chain_ids = ["test-chain"]
path = "secrets/consensus.key"
"""


def load_text(tmp_path: Path, text: str) -> object:
    path = tmp_path / "tmkms.toml"
    path.write_text(text)
    return load_config(path, log=lambda *_a, **_k: None)


def refused(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    err = info.value
    assert err.file == str((tmp_path / "tmkms.toml").absolute()), "every config error names the file"
    return err


# -- tmkms's own files ------------------------------------------------------------------------------------------


def test_tmkms_softsign_example_loads_unchanged() -> None:
    """tests/fixtures/tmkms/tmkms.toml: tmkms v0.15.0's tmkms.toml.example, softsign only."""
    config = load_config(FIXTURES / "tmkms.toml", log=lambda *_a, **_k: None)
    # irishub and agoricdev-4 have neither a key nor a validator: left out, with a warning each.
    assert [c.id for c in config.chains] == ["cosmoshub-3"]
    assert sum("has no key and no [[validator]]" in w for w in config.warnings) == 2
    chain = config.chains[0]
    assert chain.key_format == KeyFormat("bech32", "cosmospub", "cosmosvalconspub")
    assert chain.sign_extensions is False
    assert chain.state_file == FIXTURES / "state" / "cosmoshub_priv_validator_state.json"
    assert chain.state_format == "auto"  # unset: the file keeps its own format, new state is slots
    (validator,) = config.validators
    assert validator.chain_id == "cosmoshub-3"
    assert validator.protocol_version == "v0.38"
    assert validator.reconnect is True
    assert validator.max_height == 500000  # written as the string "500000" in tmkms's example
    assert validator.secret_key == FIXTURES / "secrets" / "kms-identity.key"
    assert validator.parsed_addr == ValidatorAddr(
        scheme="tcp", host="example1.example.com", port=26658, peer_id="f88883b673fc69d7869cab098de3bafc2ff76eb8"
    )
    (soft,) = config.providers.softsign
    assert soft.chain_ids == ("cosmoshub-3",)
    assert soft.key_type == "consensus"
    assert soft.key_format is None
    assert soft.path == FIXTURES / "secrets" / "consensus-ed25519.key"
    assert config.guard is None and config.metrics is None


def test_tmkms_init_output_loads_unchanged() -> None:
    config = load_config(FIXTURES / "tmkms-init.toml", log=lambda *_a, **_k: None)
    assert config.warnings == ()
    assert config.validators[0].protocol_version == "v0.34"
    assert config.chains[0].state_file == Path("/var/lib/tmkms/state/cosmoshub-3-consensus.json")
    assert config.providers.softsign[0].path == Path("/var/lib/tmkms/secrets/cosmoshub-3-consensus.key")


def test_tmkms_yubihsm_config_loads_unchanged() -> None:
    config = load_config(FIXTURES / "tmkms-yubihsm.toml", log=lambda *_a, **_k: None)
    (hsm,) = config.providers.yubihsm
    assert hsm.adapter.type == "usb" and hsm.adapter.addr is None and hsm.adapter.timeout_ms == 1000
    assert hsm.auth.key == 1
    assert hsm.auth.password is None
    assert hsm.auth.password_file == Path("/var/lib/tmkms/secrets/yubihsm-password.txt")
    # The account key is not a consensus key: ignored with a warning, and irishub (keyless) with it.
    assert [(k.chain_ids, k.key, k.type) for k in hsm.keys] == [(["cosmoshub-4"], 1, "consensus")]
    assert any("account keys" in w for w in config.warnings)
    assert [c.id for c in config.chains] == ["cosmoshub-4"]
    assert hsm.serial_number == "0123456789"
    assert hsm.connector_server is not None
    assert hsm.connector_server.laddr == "tcp://127.0.0.1:12345"
    assert hsm.connector_server.cli is True and hsm.connector_server.cli_auth_key == 2
    assert config.validators[0].timeout == 10
    assert config.validators[0].protocol_version == "v0.38", "tmkms v0.15's default"


def test_tmkms_ledgertm_config_loads_unchanged() -> None:
    config = load_config(FIXTURES / "tmkms-ledgertm.toml", log=lambda *_a, **_k: None)
    (ledger,) = config.providers.ledger
    assert ledger.chain_ids == ("cosmoshub-1",)
    assert ledger.transport == "hid" and ledger.addr is None and ledger.extensions_disabled is False
    assert config.validators[0].parsed_addr == ValidatorAddr(scheme="unix", path=Path("/var/run/gaiad/privval.sock"))
    assert config.validators[0].secret_key is None
    assert config.chains[0].key_format == KeyFormat("hex")


# -- config/tmkms.toml.example ----------------------------------------------------------------------------------


def test_example_loads() -> None:
    config = load_config(EXAMPLE, log=lambda *_a, **_k: None)
    assert [c.id for c in config.chains] == ["cosmoshub-4"]
    assert config.warnings == ()


def test_example_with_every_optional_line_enabled_loads() -> None:
    """Uncommenting every "#key" / "#[[section]]" line gives a config using every section and provider."""
    text = re.sub(r"(?m)^#(?=[\[A-Za-z_])", "", EXAMPLE.read_text())
    config = parse_config(tomllib.loads(text), EXAMPLE)
    assert [c.id for c in config.chains] == ["cosmoshub-4", "osmosis-1", "juno-1", "neutron-1"]
    providers = config.providers
    assert len(providers.softsign) == len(providers.yubihsm) == len(providers.ledger) == len(providers.pkcs11) == 1
    assert providers.ledger[0].transport == "tcp"
    assert config.guard is not None and config.metrics is not None
    assert config.chains[0].sign_extensions is True
    assert config.chains[0].audit_log == EXAMPLE.parent / "audit" / "cosmoshub-4.jsonl"
    assert config.validators[1].protocol_version == "v0.37"
    assert any("state_hook" in w for w in config.warnings)


def test_example_documents_every_key() -> None:
    """Each key the loader knows appears in the example (as a setting or a commented one)."""
    text = EXAMPLE.read_text()
    keys = [
        "id", "key_format", "state_file", "state_format", "sign_extensions", "audit_log", "state_hook",
        "addr", "chain_id", "secret_key", "protocol_version", "reconnect", "max_height", "timeout",
        "chain_ids", "key_type", "path", "adapter", "auth", "password_file", "keys", "serial_number",
        "connector_server", "transport", "extensions_disabled", "module", "token_label", "slot",
        "user_pin_file", "user_pin_env", "backend", "dsn_file", "dsn_env", "timeout_ms",
    ]  # fmt: skip
    missing = [k for k in keys if not re.search(rf"(?m)^#?\s*{k} =|[{{ ,]{k} =", text)]
    assert missing == []


# -- defaults and extensions ------------------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, BASE)
    chain = config.chains[0]  # type: ignore[attr-defined]
    assert (chain.state_file, chain.state_format, chain.sign_extensions, chain.audit_log) == (None, "auto", None, None)
    validator = config.validators[0]  # type: ignore[attr-defined]
    assert (validator.protocol_version, validator.reconnect, validator.max_height) == ("v0.38", True, None)
    assert config.providers.softsign[0].key_type == "consensus"  # type: ignore[attr-defined]
    assert config.providers.softsign[0].path == tmp_path / "secrets" / "consensus.key"  # type: ignore[attr-defined]


def test_pykms_extensions(tmp_path: Path) -> None:
    text = BASE.replace('key_format = { type = "hex" }', 'key_format = "hex"\nstate_format = "slots"')
    text += '[guard]\nbackend = "postgres"\ndsn_env = "GUARD_DSN"\ntimeout_ms = 500\n[metrics]\naddr = "0.0.0.0:9102"\n'
    config = load_text(tmp_path, text)
    assert config.chains[0].state_format == "slots"  # type: ignore[attr-defined]
    assert config.guard.backend == "postgres" and config.guard.dsn_env == "GUARD_DSN"  # type: ignore[attr-defined]
    assert config.guard.timeout_ms == 500  # type: ignore[attr-defined]
    assert config.metrics.addr == "0.0.0.0:9102"  # type: ignore[attr-defined]


@pytest.mark.parametrize("version", ["v0.34", "v0.37", "v0.38", "v1.0"])
def test_protocol_versions(tmp_path: Path, version: str) -> None:
    text = BASE.replace('chain_id = "test-chain"\n', f'chain_id = "test-chain"\nprotocol_version = "{version}"\n', 1)
    assert load_text(tmp_path, text).validators[0].protocol_version == version  # type: ignore[attr-defined]


def test_ledger_alias_and_tcp_transport(tmp_path: Path) -> None:
    text = BASE.replace(
        '[[providers.softsign]]\nchain_ids = ["test-chain"]\npath = "secrets/consensus.key"\n',
        '[[providers.ledger]]\nchain_ids = ["test-chain"]\ntransport = "tcp"\naddr = "127.0.0.1:9999"\n'
        "extensions_disabled = true\n",
    )
    (ledger,) = load_text(tmp_path, text).providers.ledger  # type: ignore[attr-defined]
    assert (ledger.transport, ledger.addr, ledger.extensions_disabled) == ("tcp", "127.0.0.1:9999", True)


def test_clear_password_is_accepted_with_a_warning(tmp_path: Path) -> None:
    text = BASE.replace(
        '[[providers.softsign]]\nchain_ids = ["test-chain"]\npath = "secrets/consensus.key"\n',
        '[[providers.yubihsm]]\nadapter = { type = "http", addr = "tcp://127.0.0.1:12345" }\n'
        'auth = { key = 1, password = "hunter2-secret" }\nkeys = [{ chain_ids = ["test-chain"], key = 1 }]\n',
    )
    config = load_text(tmp_path, text)
    hsm = config.providers.yubihsm[0]  # type: ignore[attr-defined]
    assert hsm.auth.password == "hunter2-secret"
    assert "hunter2" not in repr(hsm.auth) and "hunter2" not in repr(config), "the password stays out of reprs"
    assert any("in clear" in w for w in config.warnings)  # type: ignore[attr-defined]


def test_config_warnings_are_logged(tmp_path: Path) -> None:
    text = BASE.replace('key_format = { type = "hex" }', 'key_format = { type = "hex" }\nstate_hook = { cmd = ["x"] }')
    path = tmp_path / "tmkms.toml"
    path.write_text(text)
    events: list[tuple[object, ...]] = []
    load_config(path, log=lambda event, **kw: events.append((event, kw["detail"])))
    assert len(events) == 1 and events[0][0] == "config_warning" and "state_hook" in str(events[0][1])


# -- lookup order -----------------------------------------------------------------------------------------------


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "a.toml"
    env_file = tmp_path / "b.toml"
    assert find_config_path(explicit, environ={CONFIG_ENV_VAR: str(env_file)}) == explicit
    assert find_config_path(None, environ={CONFIG_ENV_VAR: str(env_file)}) == env_file
    assert find_config_path(None, environ={}) == Path("tmkms.toml")
    env_file.write_text(BASE)
    monkeypatch.setenv(CONFIG_ENV_VAR, str(env_file))
    assert load_config(None).path == env_file
    monkeypatch.delenv(CONFIG_ENV_VAR)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"tmkms.toml: no such file .*fix: pass -c"):
        load_config(None)
    (tmp_path / "tmkms.toml").write_text(BASE)
    assert load_config(None).path == tmp_path / "tmkms.toml"


# -- refusals ---------------------------------------------------------------------------------------------------


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    err = refused(tmp_path, BASE.replace("chain_id = ", "max_heigth = 5\nchain_id = ", 1))
    assert err.key == "validator[0].max_heigth"
    assert "did you mean `max_height`?" in str(err)
    assert err.fix is not None and "remove it" in err.fix


def test_unknown_key_without_suggestion(tmp_path: Path) -> None:
    err = refused(tmp_path, BASE + '[[chain]]\nid = "x"\nkey_format = { type = "hex" }\nzzz = 1\n')
    assert err.key == "chain[1].zzz"
    assert "did you mean" not in str(err)


def test_unknown_top_level_section(tmp_path: Path) -> None:
    err = refused(tmp_path, BASE + '[metric]\naddr = "127.0.0.1:1"\n')
    assert err.key == "metric" and "did you mean `metrics`?" in str(err)


def test_unknown_provider_and_fortanix(tmp_path: Path) -> None:
    err = refused(tmp_path, BASE + '[[providers.softsing]]\nchain_ids = ["x"]\npath = "k"\n')
    assert err.key == "providers.softsing" and "did you mean `softsign`?" in str(err)
    err = refused(tmp_path, BASE + '[[providers.fortanixdsm]]\napi_endpoint = "x"\n')
    assert err.key == "providers.fortanixdsm" and "not supported" in str(err)


def test_bad_protocol_version(tmp_path: Path) -> None:
    err = refused(
        tmp_path, BASE.replace('chain_id = "test-chain"\n', 'chain_id = "test-chain"\nprotocol_version = "v0.39"\n', 1)
    )
    assert err.key == "validator[0].protocol_version"
    assert err.fix == "use one of v0.34, v0.37, v0.38, v1.0 (the CometBFT version of the node)"
    err = refused(
        tmp_path, BASE.replace('chain_id = "test-chain"\n', 'chain_id = "test-chain"\nprotocol_version = "legacy"\n', 1)
    )
    assert "Amino" in str(err)
    err = refused(
        tmp_path, BASE.replace('chain_id = "test-chain"\n', 'chain_id = "test-chain"\nprotocol_version = "V0.38"\n', 1)
    )
    assert "did you mean `v0.38`?" in str(err)


def test_bad_value_types(tmp_path: Path) -> None:
    err = refused(tmp_path, BASE.replace("[[providers.softsign]]", '[[providers.softsign]]\nkey_type = "consensys"'))
    assert err.key == "providers.softsign[0].key_type" and "did you mean `consensus`?" in str(err)
    err = refused(
        tmp_path, BASE.replace('chain_id = "test-chain"\n', 'chain_id = "test-chain"\nreconnect = "yes"\n', 1)
    )
    assert err.key == "validator[0].reconnect" and "expected true or false" in str(err)
    err = refused(
        tmp_path, BASE.replace('chain_id = "test-chain"\n', 'chain_id = "test-chain"\nmax_height = "ten"\n', 1)
    )
    assert err.key == "validator[0].max_height" and err.fix == "write max_height = 500000"
    err = refused(tmp_path, BASE.replace('chain_id = "test-chain"\n', 'chain_id = "test-chain"\nmax_height = 0\n', 1))
    assert err.key == "validator[0].max_height" and "out of range" in str(err)
    err = refused(tmp_path, BASE.replace('{ type = "hex" }', '{ type = "bech32", consensus_key_prefix = "x" }'))
    assert err.key == "chain[0].key_format.account_key_prefix" and "missing" in str(err)
    err = refused(tmp_path, BASE.replace('{ type = "hex" }', '{ type = "base58" }'))
    assert err.key == "chain[0].key_format.type" and "bech32, cosmos-json, hex" in str(err)


def test_missing_chain(tmp_path: Path) -> None:
    err = refused(tmp_path, BASE.replace('chain_id = "test-chain"', 'chain_id = "test-chian"'))
    assert err.key == "validator[0].chain_id"
    assert "no [[chain]] with id 'test-chian'" in str(err) and "did you mean `test-chain`?" in str(err)
    err = refused(tmp_path, BASE.replace('chain_ids = ["test-chain"]', 'chain_ids = ["test-chain", "other"]'))
    assert err.key == "providers.softsign[0].chain_ids" and "'other'" in str(err)


def test_chain_without_key_served_by_a_validator(tmp_path: Path) -> None:
    err = refused(
        tmp_path,
        BASE.replace('chain_ids = ["test-chain"]', 'chain_ids = ["other"]')
        + '[[chain]]\nid = "other"\nkey_format = { type = "hex" }\n',
    )
    assert err.key == "chain[0]" and "no consensus key for chain 'test-chain'" in str(err)


def test_duplicate_chain_and_two_keys(tmp_path: Path) -> None:
    err = refused(tmp_path, BASE + '[[chain]]\nid = "test-chain"\nkey_format = { type = "hex" }\n')
    assert err.key == "chain[1].id" and "configured twice" in str(err)
    err = refused(tmp_path, BASE + '[[providers.ledgertm]]\nchain_ids = ["test-chain"]\n')
    assert err.key == "providers.ledgertm[0].chain_ids" and "2 provider entries" in str(err)
    err = refused(tmp_path, BASE.replace('chain_ids = ["test-chain"]', 'chain_ids = ["test-chain", "test-chain"]'))
    assert err.key == "providers.softsign[0].chain_ids[1]" and "listed twice" in str(err)


@pytest.mark.parametrize(
    ("addr", "needle"),
    [
        ("http://127.0.0.1:26659", "unsupported scheme 'http'"),
        ("tcp://127.0.0.1", "expected host:port"),
        ("tcp://127.0.0.1:0", "bad port"),
        ("tcp://127.0.0.1:70000", "bad port"),
        ("tcp://:26659", "bad host"),
        ("unix://", "no socket path"),
        ("tcp://[::1:26659", "bad bracketed IPv6"),
    ],
)
def test_bad_addr(tmp_path: Path, addr: str, needle: str) -> None:
    err = refused(tmp_path, BASE.replace("tcp://127.0.0.1:26659", addr))
    assert err.key == "validator[0].addr" and needle in str(err) and err.fix


@pytest.mark.parametrize("peer", ["deadbeef", "g" * 40, "a" * 41])
def test_bad_peer_id(tmp_path: Path, peer: str) -> None:
    err = refused(tmp_path, BASE.replace("tcp://127.0.0.1:26659", f"tcp://{peer}@127.0.0.1:26659"))
    assert err.key == "validator[0].addr" and "is not 40 hex characters" in str(err)


def test_tcp_needs_secret_key(tmp_path: Path) -> None:
    err = refused(tmp_path, BASE.replace('secret_key = "secrets/kms-identity.key"\n', ""))
    assert err.key == "validator[0].secret_key" and "pykms init" in (err.fix or "")


def test_secrets_never_in_clear(tmp_path: Path) -> None:
    err = refused(tmp_path, BASE + '[guard]\nbackend = "postgres"\ndsn = "postgresql://u:p@h/db"\n')
    assert err.key == "guard.dsn" and "dsn_file" in (err.fix or "")
    assert "u:p@h" not in str(err), "the secret is not echoed"
    err = refused(tmp_path, BASE + '[guard]\nbackend = "postgres"\n')
    assert err.key == "guard.dsn_file"
    pkcs11 = '[[providers.pkcs11]]\nmodule = "/lib/p11.so"\ntoken_label = "t"\nuser_pin = "1234"\nkeys = []\n'
    err = refused(tmp_path, BASE + pkcs11)
    assert err.key == "providers.pkcs11[0].user_pin" and "1234" not in str(err)


def test_toml_syntax_error(tmp_path: Path) -> None:
    err = refused(tmp_path, BASE + "[[chain]\n")
    assert "invalid TOML" in str(err) and "line" in str(err)


def test_chain_id_limits(tmp_path: Path) -> None:
    err = refused(tmp_path, BASE.replace('id = "test-chain"', f'id = "{"c" * 51}"'))
    assert err.key == "chain[0].id" and "MaxChainIDLen" in (err.fix or "")


# -- addresses --------------------------------------------------------------------------------------------------


def test_parse_addr_forms() -> None:
    assert parse_addr("127.0.0.1:26658") == ValidatorAddr("tcp", "127.0.0.1", 26658), "no scheme means tcp"
    ipv6 = parse_addr("tcp://" + "AB" * 20 + "@[::1]:26658")
    assert ipv6 == ValidatorAddr("tcp", "::1", 26658, "ab" * 20)
    assert ipv6.display == "tcp://[::1]:26658"
    assert str(ipv6) == "tcp://" + "ab" * 20 + "@[::1]:26658"
    unix = parse_addr("unix:///run/node.sock")
    assert (unix.scheme, unix.path, unix.display) == ("unix", Path("/run/node.sock"), "unix:///run/node.sock")
    assert parse_addr("unix://node.sock", base=Path("/etc/kms")).path == Path("/etc/kms/node.sock")


SOFT = '[[providers.softsign]]\nchain_ids = ["test-chain"]\npath = "secrets/consensus.key"\n'
HSM = '[[providers.yubihsm]]\nkeys = [{ chain_ids = ["test-chain"], key = 1 }]\n'
P11 = '[[providers.pkcs11]]\nmodule = "/lib/p11.so"\n'
P11_KEYS = 'keys = [{ chain_ids = ["test-chain"], label = "k" }]\n'


@pytest.mark.parametrize(
    ("provider", "key", "needle"),
    [
        (SOFT.replace('["test-chain"]', "[]"), "providers.softsign[0].chain_ids", "at least one chain"),
        (SOFT.replace('["test-chain"]', "[1]"), "providers.softsign[0].chain_ids[0]", "expected a string"),
        (SOFT.replace('path = "secrets/consensus.key"', 'path = ""'), "providers.softsign[0].path", "not be empty"),
        (SOFT.replace('path = "secrets/consensus.key"', ""), "providers.softsign[0].path", "missing"),
        (SOFT.replace("[[providers.softsign]]", "[providers.softsign]"), "providers.softsign", "array of tables"),
        (HSM, "providers.yubihsm[0].adapter", "missing"),
        (HSM + 'adapter = { type = "usb" }\n', "providers.yubihsm[0].auth", "missing"),
        (
            HSM + 'adapter = { type = "usb", timeout_ms = 0 }\nauth = { key = 1, password = "x" }\n',
            "providers.yubihsm[0].adapter.timeout_ms",
            "out of range",
        ),
        (
            HSM + 'adapter = { type = "http" }\nauth = { key = 1, password = "x" }\n',
            "providers.yubihsm[0].adapter.addr",
            "missing",
        ),
        (
            HSM + 'adapter = { type = "http", addr = "tcp://localhost" }\nauth = { key = 1, password = "x" }\n',
            "providers.yubihsm[0].adapter.addr",
            "not host:port",
        ),
        (
            HSM + 'adapter = { type = "usb" }\nauth = { key = 1, password = "x", password_file = "f" }\n',
            "providers.yubihsm[0].auth",
            "exactly one of password_file and password",
        ),
        (
            HSM + 'adapter = { type = "usb" }\nauth = { key = 70000, password_file = "f" }\n',
            "providers.yubihsm[0].auth.key",
            "out of range",
        ),
        (
            HSM + 'adapter = { type = "usb" }\nauth = { key = 1, password_file = "f" }\nserial_number = 123\n',
            "providers.yubihsm[0].serial_number",
            "expected a string",
        ),
        (
            HSM + 'adapter = { type = "usb" }\nauth = { key = 1, password_file = "f" }\n'
            'connector_server = { laddr = "tcp://127.0.0.1:1", cli = { auth_kye = 2 } }\n',
            "providers.yubihsm[0].connector_server.cli.auth_kye",
            "did you mean `auth_key`?",
        ),
        (
            '[[providers.ledgertm]]\nchain_ids = ["test-chain"]\ntransport = "tcp"\n',
            "providers.ledgertm[0].addr",
            "missing",
        ),
        (
            '[[providers.ledgertm]]\nchain_ids = ["test-chain"]\naddr = "h:1"\n',
            "providers.ledgertm[0].addr",
            "only used",
        ),
        (P11 + 'user_pin_env = "PIN"\n' + P11_KEYS, "providers.pkcs11[0].token_label", "name the token"),
        (
            P11 + 'token_label = "t"\nuser_pin_env = "PIN"\nuser_pin_file = "f"\n' + P11_KEYS,
            "providers.pkcs11[0].user_pin_file",
            "only one",
        ),
        (
            P11 + 'slot = 0\nkeys = [{ chain_ids = ["test-chain"], id = "xyz" }]\n',
            "providers.pkcs11[0].keys[0].id",
            "not hex",
        ),
        (P11 + 'slot = 0\nkeys = [{ chain_ids = ["test-chain"] }]\n', "providers.pkcs11[0].keys[0]", "label or id"),
        (P11 + "slot = 0\n", "providers.pkcs11[0].keys", "no keys"),
    ],
)
def test_provider_refusals(tmp_path: Path, provider: str, key: str, needle: str) -> None:
    err = refused(tmp_path, BASE.replace(SOFT, provider))
    assert err.key == key, str(err)
    assert needle in str(err)
    assert err.fix


def test_pkcs11_and_usb_accepted(tmp_path: Path) -> None:
    text = BASE.replace(
        SOFT, P11 + 'slot = 3\nuser_pin_env = "PIN"\nkeys = [{ chain_ids = ["test-chain"], id = "0A0b" }]\n'
    )
    (token,) = load_text(tmp_path, text).providers.pkcs11  # type: ignore[attr-defined]
    assert (token.slot, token.token_label, token.user_pin_env, token.keys[0].id) == (3, None, "PIN", "0a0b")
    text = BASE.replace(
        SOFT, HSM + 'adapter = { type = "usb", timeout_ms = 5000 }\nauth = { key = 1, password_file = "p" }\n'
    )
    (hsm,) = load_text(tmp_path, text).providers.yubihsm  # type: ignore[attr-defined]
    assert hsm.adapter.timeout_ms == 5000 and hsm.auth.password_file == tmp_path / "p"
    assert hsm.connector_server is None


@pytest.mark.parametrize(
    ("text", "key", "needle"),
    [
        ('[metrics]\naddr = "9102"\n', "metrics.addr", "not host:port"),
        ("[metrics]\n", "metrics.addr", "missing"),
        ("metrics = 1\n", "metrics", "expected a table"),
        ('[guard]\nbackend = "sqlite"\n', "guard.backend", "use one of file, postgres"),
        ("[guard]\ntimeout_ms = 0\n", "guard.timeout_ms", "out of range"),
    ],
)
def test_extension_refusals(tmp_path: Path, text: str, key: str, needle: str) -> None:
    err = refused(tmp_path, text + BASE)
    assert err.key == key and needle in str(err)


def test_key_format_refusals(tmp_path: Path) -> None:
    err = refused(tmp_path, BASE.replace('key_format = { type = "hex" }', 'key_format = "bech32"'))
    assert err.key == "chain[0].key_format" and "consensus_key_prefix" in (err.fix or "")
    err = refused(tmp_path, BASE.replace('key_format = { type = "hex" }', ""))
    assert err.key == "chain[0].key_format" and "missing" in str(err)
    bad = '{ type = "bech32", account_key_prefix = "cosmospub", consensus_key_prefix = "CosmosValConsPub" }'
    err = refused(tmp_path, BASE.replace('{ type = "hex" }', bad))
    assert err.key == "chain[0].key_format.consensus_key_prefix" and "lowercase" in (err.fix or "")
    err = refused(tmp_path, BASE.replace('{ type = "hex" }', '{ type = "hex", consensus_key_prefx = "x" }'))
    assert err.key == "chain[0].key_format.consensus_key_prefx" and "unknown key" in str(err)
    # tmkms's field-less formats ignore the prefixes (serde): accepted, as guides write them.
    load_text(tmp_path, BASE.replace('{ type = "hex" }', '{ type = "hex", consensus_key_prefix = "x" }'))


def test_account_softsign_key_ignored_with_warning(tmp_path: Path) -> None:
    extra = '[[providers.softsign]]\nchain_ids = ["test-chain"]\nkey_type = "account"\npath = "secrets/account.key"\n'
    config = load_text(tmp_path, BASE + extra)
    assert len(config.providers.softsign) == 1  # type: ignore[attr-defined]
    assert any("account keys are not used" in w for w in config.warnings)  # type: ignore[attr-defined]


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "dir.toml")
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9\n" + BASE.encode())
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(tmp_path / "latin1.toml")


def test_public_parse_addr_errors() -> None:
    with pytest.raises(ConfigError, match=r"unsupported scheme 'tpc'.*did you mean `tcp`") as info:
        parse_addr("tpc://127.0.0.1:1")
    assert info.value.fix and info.value.file is None


def test_yubihsm_key_errors_name_the_entry_as_written(tmp_path: Path) -> None:
    hsm = (
        '[[providers.yubihsm]]\nadapter = { type = "usb" }\nauth = { key = 1, password_file = "p" }\n'
        'keys = [{ chain_ids = ["test-chain"], key = 2, type = "account" }, { chain_ids = ["nope"], key = 1 }]\n'
    )
    err = refused(tmp_path, BASE + hsm)
    assert err.key == "providers.yubihsm[0].keys[1].chain_ids" and "'nope'" in str(err)
