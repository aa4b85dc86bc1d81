"""SignState and its file formats: CometBFT priv_validator_state.json in and out, tmkms import, detection."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pykms.errors import StateCorrupt
from pykms.guard.state import (
    MAX_HEIGHT,
    MAX_ROUND,
    SignState,
    detect_format,
    from_cometbft_json,
    from_tmkms_json,
    parse_json_state,
    state_to_json,
    to_cometbft_json,
)

SRC = "chain_priv_validator_state.json"


def test_initial_state_is_filepv_fresh_file() -> None:
    # cometbft privval/file.go: a new FilePV writes {"height": "0", "round": 0, "step": 0}.
    assert json.loads(to_cometbft_json(SignState.initial())) == {"height": "0", "round": 0, "step": 0}


def test_cometbft_fixture_round_trips() -> None:
    # cometbft privval/file_test.go TestUnmarshalValidatorState.
    serialized = b'{\n\t\t"height": "1",\n\t\t"round": 1,\n\t\t"step": 1\n\t}'
    state = from_cometbft_json(serialized, SRC)
    assert (state.height, state.round, state.step, state.signature, state.sign_bytes) == (1, 1, 1, b"", b"")
    assert json.loads(to_cometbft_json(state)) == json.loads(serialized)


def test_signature_is_base64_and_signbytes_uppercase_hex() -> None:
    state = SignState(12, 3, 2, bytes(range(64)), b"\xab\xcd\x01")
    obj = json.loads(to_cometbft_json(state))
    assert obj == {
        "height": "12",
        "round": 3,
        "step": 2,
        "signature": base64.b64encode(bytes(range(64))).decode(),
        "signbytes": "ABCD01",
    }
    assert list(obj) == ["height", "round", "step", "signature", "signbytes"]
    assert from_cometbft_json(to_cometbft_json(state), SRC) == state


def test_lowercase_signbytes_accepted_like_go_hex_decoding() -> None:
    text = b'{"height":"5","round":0,"step":2,"signature":"AAAA","signbytes":"abcd"}'
    assert from_cometbft_json(text, SRC).sign_bytes == b"\xab\xcd"


def test_state_to_json_ends_with_newline() -> None:
    assert state_to_json(SignState.initial()).endswith("}\n")


@given(
    height=st.integers(0, MAX_HEIGHT),
    round_=st.integers(0, MAX_ROUND),
    step=st.integers(0, 3),
    sig=st.binary(max_size=96),
    extra=st.binary(max_size=300),
)
def test_cometbft_round_trip_property(height: int, round_: int, step: int, sig: bytes, extra: bytes) -> None:
    state = SignState(height, round_, step, sig, extra if sig else b"")
    assert from_cometbft_json(to_cometbft_json(state), SRC) == state


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"height":"1","round":0}', "missing step"),
        (b'{"height":"1","round":0,"step":1,"extra":1}', "unknown key"),
        (b'{"height":1,"round":0,"step":1}', "height must be a decimal string"),
        (b'{"height":"-1","round":0,"step":1}', "not a non-negative decimal"),
        (b'{"height":"01x","round":0,"step":1}', "not a non-negative decimal"),
        (b'{"height":"9223372036854775808","round":0,"step":1}', "out of range"),
        (b'{"height":"1","round":true,"step":1}', "round must be an integer"),
        (b'{"height":"1","round":0,"step":4}', "step 4 out of range"),
        (b'{"height":"1","round":0,"step":1.0}', "step must be an integer"),
        (b'{"height":"1","height":"2","round":0,"step":1}', "appears twice"),
        (b'{"height":"1","round":0,"step":1,"signature":"!!"}', "not valid base64"),
        (b'{"height":"1","round":0,"step":1,"signature":5}', "base64 string"),
        (b'{"height":"1","round":0,"step":1,"signature":"AAAA","signbytes":"ABC"}', "hex string"),
        (b'{"height":"1","round":0,"step":1,"signbytes":"ABCD"}', "signbytes without a signature"),
        (b"{" + b" " * 70000 + b"}", "larger than any state file"),
    ],
)
def test_cometbft_strict_parsing(text: bytes, why: str) -> None:
    with pytest.raises(StateCorrupt, match=why) as info:
        from_cometbft_json(text, SRC)
    message = str(info.value)
    assert message.startswith(SRC)
    assert "pykms state import" in message
    assert "pykms state init" in message


def test_tmkms_file_given_as_cometbft_says_import_it() -> None:
    with pytest.raises(StateCorrupt, match=r"tmkms state file.*pykms state import"):
        from_cometbft_json(b'{"height":"5","round":"0","step":1,"block_id":null}', SRC)


# ---- tmkms -------------------------------------------------------------------------------------------------------

TMKMS_BLOCK = {
    "hash": "26C0A41F3243C6BCD7AD2DFF8A8D83A71D29D307B5326C227F734A1A512FE47D",
    "parts": {"total": 1, "hash": "2470A41F3243C6BCD7AD2DFF8A8D83A71D29D307B5326C227F734A1A512FE47D"},
}


@pytest.mark.parametrize(("tm_step", "step"), [(0, 1), (1, 2), (2, 3)])
def test_tmkms_steps_map_to_cometbft(tm_step: int, step: int) -> None:
    # tmkms src/privval.rs consensus_state: proposal 0, prevote 1, precommit 2.
    text = json.dumps({"height": "1234", "round": "2", "step": tm_step, "block_id": TMKMS_BLOCK}).encode()
    assert from_tmkms_json(text, SRC) == SignState(1234, 2, step)


def test_tmkms_nil_block_and_numeric_fields() -> None:
    text = b'{"height": 77, "round": 0, "step": 1, "block_id": null}'
    assert from_tmkms_json(text, SRC) == SignState(77, 0, 2)


def test_tmkms_fresh_state_is_fresh() -> None:
    assert from_tmkms_json(b'{"height":"0","round":"0","step":0,"block_id":null}', SRC) == SignState.initial()


def test_tmkms_part_set_header_alias() -> None:
    block = {"hash": TMKMS_BLOCK["hash"], "part_set_header": TMKMS_BLOCK["parts"]}
    text = json.dumps({"height": "3", "round": "0", "step": 2, "block_id": block}).encode()
    assert from_tmkms_json(text, SRC).step == 3


@pytest.mark.parametrize(
    "obj",
    [
        {"height": "3", "round": "0", "step": 3, "block_id": None},
        {"height": "3", "round": "0", "step": 1, "block_id": "xx"},
        {"height": "3", "round": "0", "step": 1, "block_id": {"hash": "XYZ"}},
        {"height": "3", "round": "0", "step": 1, "block_id": {"hash": "AB", "parts": []}},
        {"height": "3", "round": "0", "step": 1, "block_id": None, "other": 1},
        {"height": "x", "round": "0", "step": 1, "block_id": None},
    ],
)
def test_tmkms_strict_parsing(obj: dict[str, object]) -> None:
    with pytest.raises(StateCorrupt):
        from_tmkms_json(json.dumps(obj).encode(), SRC)


def test_detect_format() -> None:
    assert detect_format(to_cometbft_json(SignState(5, 0, 1)), SRC) == "cometbft"
    assert detect_format(b'{"height":"5","round":"0","step":1,"block_id":null}', SRC) == "tmkms"
    assert detect_format(b'{"height":"5","round":"0","step":1}', SRC) == "tmkms"  # round as a string
    assert detect_format(b"PYKMSST\x00rest", SRC) == "slots"
    with pytest.raises(StateCorrupt):
        detect_format(b"garbage", SRC)


def test_parse_json_state_reports_format() -> None:
    assert parse_json_state(b'{"height":"5","round":"1","step":2,"block_id":null}', SRC) == (
        "tmkms",
        SignState(5, 1, 3),
    )
    assert parse_json_state(b'{"height":"5","round":1,"step":2}', SRC) == ("cometbft", SignState(5, 1, 2))
    with pytest.raises(StateCorrupt, match="binary slots file"):
        parse_json_state(b"PYKMSST\x00", SRC)


# ---- SignState ---------------------------------------------------------------------------------------------------


def test_repr_is_short_and_has_no_full_signature() -> None:
    sig = bytes(range(64))
    text = repr(SignState(10, 2, 3, sig, b"x" * 150))
    assert text == "SignState(h=10, r=2, s=3, sig=00010203…, sign_bytes=150 B)"
    assert sig.hex() not in text


@pytest.mark.parametrize(
    "args",
    [(-1, 0, 0), (0, -1, 0), (0, 0, 4), (MAX_HEIGHT + 1, 0, 0), (0, MAX_ROUND + 1, 0), (0, 0, 1, b"", b"sb")],
)
def test_sign_state_validates(args: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        SignState(*args)  # type: ignore[arg-type]


def test_sign_state_types() -> None:
    with pytest.raises(TypeError):
        SignState(True, 0, 0)
    with pytest.raises(TypeError):
        SignState(1, 0, 0, "sig")  # type: ignore[arg-type]
