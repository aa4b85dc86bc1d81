"""tmkms-compatible setup derivation: BIP39, hkd32, bech32 role passwords, wrap key (pure functions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pykms.providers import yubihsm_setup as setup

# tmkms src/commands/yubihsm/setup.rs, `mod tests`: TEST_KEY (bytes 0..31), TEST_BIP39_PHRASE and the
# derive_test_vectors outputs for the paths [1], [1, 2], [1, 2, 3] (under the "1" version component).
TEST_KEY = bytes(range(32))
TEST_BIP39_PHRASE = (
    "abandon amount liar amount expire adjust cage candy arch gather drum bullet "
    "absurd math era live bid rhythm alien crouch range attend journey unaware"
)
DERIVE_VECTORS = [
    (
        [b"1"],
        [3, 76, 227, 91, 100, 247, 29, 7, 204, 76, 23, 170, 23, 160, 6, 21, 187, 233, 220, 6, 45, 131, 162, 9,
         150, 246, 133, 244, 99, 107, 101, 78],
    ),
    (
        [b"1", b"2"],
        [236, 169, 7, 38, 98, 113, 230, 246, 200, 141, 136, 189, 189, 19, 199, 248, 21, 127, 94, 75, 152, 134,
         94, 128, 221, 172, 217, 165, 200, 87, 162, 205],
    ),
    (
        [b"1", b"2", b"3"],
        [60, 230, 72, 98, 156, 75, 72, 142, 18, 42, 73, 177, 148, 32, 167, 226, 201, 23, 242, 56, 150, 23, 116,
         175, 245, 118, 222, 36, 156, 143, 158, 11],
    ),
]  # fmt: skip


def test_bip39_vector() -> None:
    assert setup.entropy_to_mnemonic(TEST_KEY) == TEST_BIP39_PHRASE
    assert setup.mnemonic_to_entropy(TEST_BIP39_PHRASE) == TEST_KEY
    assert setup.mnemonic_to_entropy("  " + TEST_BIP39_PHRASE.upper().replace(" ", "   ") + "\n") == TEST_KEY


@pytest.mark.parametrize(("path", "expected"), DERIVE_VECTORS)
def test_hkd32_vectors(path: list[bytes], expected: list[int]) -> None:
    assert setup.derive_secret(TEST_KEY, path) == bytes(expected)


def test_bech32_bip173_vectors() -> None:
    # BIP173, "valid Bech32" test vectors: "a12uel5l" (empty payload) and
    # "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw", whose 32 data words are 0..31 (= 20 bytes).
    assert setup.bech32_encode("a", b"") == "a12uel5l"
    words = int("".join(f"{i:05b}" for i in range(32)), 2).to_bytes(20, "big")
    assert setup.bech32_encode("abcdef", words) == "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw"


def test_mnemonic_errors_name_the_problem_not_the_words() -> None:
    words = TEST_BIP39_PHRASE.split()
    with pytest.raises(setup.MnemonicError, match="expected 24 words, got 23"):
        setup.mnemonic_to_entropy(" ".join(words[:23]))
    with pytest.raises(setup.MnemonicError, match="word 5 is not in the BIP39") as exc:
        setup.mnemonic_to_entropy(" ".join([*words[:4], "notaword", *words[5:]]))
    assert "abandon" not in str(exc.value)
    swapped = [words[1], words[0], *words[2:]]
    with pytest.raises(setup.MnemonicError, match="checksum"):
        setup.mnemonic_to_entropy(" ".join(swapped))


@given(st.binary(min_size=32, max_size=32))
def test_mnemonic_round_trip(entropy: bytes) -> None:
    assert setup.mnemonic_to_entropy(setup.entropy_to_mnemonic(entropy)) == entropy


def test_plan_matches_tmkms_roles() -> None:
    plan = setup.plan_from_entropy(TEST_KEY)
    assert plan.mnemonic == TEST_BIP39_PHRASE
    admin = plan.role("admin")
    assert (admin.key_id, admin.password, admin.domains) == (1, TEST_BIP39_PHRASE, 0xFFFF)
    validator = plan.role("validator")
    assert validator.key_id == 4 and validator.domains == 0x0001 and validator.delegated == 0
    assert validator.capabilities == (1 << 7) | (1 << 8) | (1 << 0x22) | (1 << 0x18)
    # Passwords: bech32 with hrp kms-<role>-password- over the first 16 bytes of derive([role, name]).
    for name, key_id in (("operator", 2), ("auditor", 3), ("validator", 4)):
        role = plan.role(name)
        assert role.key_id == key_id
        secret = setup.derive_secret(TEST_KEY, [b"role", name.encode()])[:16]
        assert role.password == setup.bech32_encode(f"kms-{name}-password-", secret)
        assert role.password.startswith(f"kms-{name}-password-1")
        assert role.password not in repr(plan)
    assert plan.wrap_key == setup.derive_secret(TEST_KEY, [b"wrap", b"0x0001"])
    assert len({r.password for r in plan.roles}) == 4
    assert plan.wrap_key.hex() not in repr(plan) and TEST_BIP39_PHRASE not in repr(plan)


def test_new_entropy_mixes_both_sources() -> None:
    a = setup.new_mnemonic_entropy(bytes(32), lambda n: bytes(n))
    b = setup.new_mnemonic_entropy(bytes(32), lambda n: b"\x01" * n)
    c = setup.new_mnemonic_entropy(b"\x01" * 32, lambda n: bytes(n))
    assert len({a, b, c}) == 3 and all(len(x) == 32 for x in (a, b, c))


def test_role_capabilities_are_tmkms_bits() -> None:
    """The capability masks as bit positions (python-yubihsm defs.CAPABILITY; tmkms setup.rs roles), so a change
    of how they are spelled in the code cannot change what is installed on the device."""

    def bits(*positions: int) -> int:
        return sum(1 << p for p in positions)

    plan = setup.plan_from_entropy(TEST_KEY)
    everything = (1 << 0x38) - 1
    assert (plan.role("admin").capabilities, plan.role("admin").delegated) == (everything, everything)
    operator = plan.role("operator")
    assert operator.capabilities == bits(0x04, 0x03, 0x15, 0x14, 0x0D, 0x0C, 0x00, 0x12, 0x18, 0x22)
    assert (operator.delegated, operator.domains) == (everything, 0xFFFF)
    auditor = plan.role("auditor")
    assert (auditor.capabilities, auditor.delegated) == (bits(0x18, 0x12, 0x11, 0x00), 0)
