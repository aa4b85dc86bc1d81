"""Key display formats against tests/vectors/README.md V10/V11/D2 and BIP-173's own test vectors."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from pykms.config import KeyFormat
from pykms.errors import ConfigError, KmsError
from pykms.keyring import (
    AMINO_ED25519_PUBKEY_PREFIX,
    bech32_encode,
    consensus_address,
    format_public_key,
)

COSMOS = KeyFormat("bech32", "cosmospub", "cosmosvalconspub")

#: V10: tendermint-rs tendermint/src/public_key.rs test_consensus_serialization (cosmos-sdk MustBech32ifyPubKey).
V10_PUB = bytes.fromhex("4A25C6640A1F72B9C975338294EF51B6D1C33158BB6ECBA69FBC3FB5A33C9DCE")
V10_BECH32 = "cosmosvalconspub1zcjduepqfgjuveq2raetnjt4xwpffm63kmguxv2chdhvhf5lhslmtgeunh8qmf7exk"
#: D2 (derived, tests/vectors/README.md): bech32 consensus address of the V10 key.
D2_VALCONS = "cosmosvalcons1uvr5swsgcw25ga9zvq8najxun9sn4c2zr5g5yu"


def bech32_decode(text: str) -> tuple[str, bytes]:
    """A reference BIP-173 decoder (checksum, case, separator, padding) to check the product's encoder against."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise ValueError("separator position")
    hrp, charset = text[:pos], "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
    words = [charset.index(c) for c in text[pos + 1 :]]  # ValueError on a character outside the alphabet
    chk = 1
    for value in [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + words:
        top, chk = chk >> 25, (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            chk ^= gen if (top >> i) & 1 else 0
    if chk != 1:
        raise ValueError("checksum mismatch")
    bits = "".join(f"{w:05b}" for w in words[:-6])
    if "1" in bits[len(bits) - len(bits) % 8 :]:
        raise ValueError("non-zero padding")
    return hrp, bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits) - 7, 8))


def test_v10_bech32_consensus_key() -> None:
    assert format_public_key(V10_PUB, COSMOS) == V10_BECH32
    hrp, data = bech32_decode(V10_BECH32)
    assert (hrp, data) == ("cosmosvalconspub", AMINO_ED25519_PUBKEY_PREFIX + V10_PUB)


def test_v10_account_key_bech32_encoder() -> None:
    """V10 test_account_serialization: the same encoder over the secp256k1 Amino prefix eb5ae98721."""
    pub = bytes.fromhex("02A1633CAFCC01EBFB6D78E39F687A1F0995C62FC95F51EAD10A02EE0BE551B5DC")
    expected = "cosmospub1addwnpepq2skx090esq7h7md0r3e76r6ruyet330e904r6k3pgpwuzl92x6actrt4uq"
    assert bech32_encode("cosmospub", bytes.fromhex("eb5ae98721") + pub) == expected
    # ... and the display of a 33-byte key takes that prefix and the account_key_prefix
    assert format_public_key(pub, COSMOS) == expected
    doc = {"@type": "/cosmos.crypto.secp256k1.PubKey", "key": base64.b64encode(pub).decode()}
    assert json.loads(format_public_key(pub, KeyFormat("cosmos-json"))) == doc
    assert format_public_key(pub, KeyFormat("hex")) == pub.hex().upper()
    with pytest.raises(ConfigError, match="account_key_prefix"):
        format_public_key(pub, KeyFormat("bech32", None, "cosmosvalconspub"))


def test_d2_consensus_address() -> None:
    assert bech32_encode("cosmosvalcons", consensus_address(V10_PUB)) == D2_VALCONS
    assert bech32_decode(D2_VALCONS) == ("cosmosvalcons", consensus_address(V10_PUB))


def test_v10_json_pubkey_and_other_formats() -> None:
    """V10 json_parsing: {"type":"tendermint/PubKeyEd25519","value":"RblzMO4is5..."} <-> 45b97330...."""
    pub = bytes.fromhex("45b97330ee22b392f5859cfac28e243dba6dccecae7ba2d3938fa53e10f51519")
    b64 = "RblzMO4is5L1hZz6wo4kPbptzOyue6LTk4+lPhD1FRk="
    cosmos_json = format_public_key(pub, KeyFormat("cosmos-json"))
    assert cosmos_json == '{"@type":"/cosmos.crypto.ed25519.PubKey","key":"' + b64 + '"}'
    assert json.loads(cosmos_json) == {"@type": "/cosmos.crypto.ed25519.PubKey", "key": b64}
    assert format_public_key(pub, KeyFormat("hex")) == pub.hex().upper()
    assert (
        format_public_key(pub, KeyFormat("hex")) == "45B97330EE22B392F5859CFAC28E243DBA6DCCECAE7BA2D3938FA53E10F51519"
    )


@pytest.mark.parametrize(
    ("seed_hex", "address"),
    [
        # V11 (cometbft tm-signer-harness keyFileContents; internal/test testPrivValidatorKey; "it's a secret").
        (
            "f0edfd02442ca1ed6c050c2e77f29dba5f2583c2bd485b2a97d699bf05d04add",
            "D08FCA3BA74CF17CBFC15E64F9505302BB0E2748",
        ),
        (
            "11592a24efe3217a77ae40125df87d627c93a185d15e106bea0f5c415c4f1674",
            "A3258DCBF45DCA0DF052981870F2D1441A36D145",
        ),
        (
            "9d834d3fcac4ee25536b70e15376febb697861ab573405d8b89290417fd16070",
            "DC52D5CF8DFD1793D71038B342A29B01AD8A5D63",
        ),
    ],
)
def test_v11_addresses(seed_hex: str, address: str) -> None:
    pub = bytes(SigningKey(bytes.fromhex(seed_hex)).verify_key)
    assert consensus_address(pub).hex().upper() == address


@pytest.mark.parametrize(
    "valid",
    # BIP-173 "Test vectors: valid Bech32" (checksums only; these strings are in the BIP itself).
    [
        "A12UEL5L",
        "a12uel5l",
        "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
        "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
        "11qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqc8247j",
        "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
        "?1ezyfcl",
    ],
)
def test_bip173_valid_checksums(valid: str) -> None:
    hrp, data = bech32_decode(valid)
    assert bech32_encode(hrp, data) == valid.lower()


@pytest.mark.parametrize(
    "invalid",
    # BIP-173 "invalid Bech32" cases that concern checksum, separator and case.
    ["pzry9x0s0muk", "1pzry9x0s0muk", "x1b4n0q5v", "li1dgmt3", "A1G7SGD8", "10a06t8", "1qzzfhee", "a12UEL5L"],
)
def test_bip173_invalid(invalid: str) -> None:
    with pytest.raises(ValueError):
        bech32_decode(invalid)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=20), st.binary(max_size=80))
def test_bech32_round_trip(hrp: str, data: bytes) -> None:
    text = bech32_encode(hrp, data)
    assert bech32_decode(text) == (hrp, data)
    assert bech32_decode(text.upper()) == (hrp, data)
    flipped = text[:-1] + ("q" if text[-1] != "q" else "p")
    with pytest.raises(ValueError):
        bech32_decode(flipped)


def test_format_errors() -> None:
    with pytest.raises(KmsError, match="32 bytes"):
        format_public_key(b"\x00" * 31, KeyFormat("hex"))
    with pytest.raises(ConfigError, match="consensus_key_prefix"):
        format_public_key(V10_PUB, KeyFormat("bech32"))
    with pytest.raises(ValueError):
        bech32_encode("Cosmos", b"")
