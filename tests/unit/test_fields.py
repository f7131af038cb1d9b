"""Field encryption (AES-256-GCM bound to table, column and row) and key configuration."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gridapi.security.fields import (
    KEY_BYTES,
    NONCE_BYTES,
    CiphertextError,
    FieldCipher,
    KeyConfigError,
    blind_index,
    new_key_text,
    parse_keys,
)

K1, K2, K3 = (bytes([n]) * KEY_BYTES for n in (1, 2, 3))
CIPHER = FieldCipher({1: K1})
WHERE = {"table": "persons", "column": "phone", "row": "0123456789abcdef0123456789abcdef"}

values = st.text(max_size=200)
uids = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32)
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def assert_no_echo(message: str) -> None:
    """The message names where (table, column, row) and why, never the value."""
    where = re.escape(f"{WHERE['table']}.{WHERE['column']} of row {WHERE['row']}")
    assert re.fullmatch(
        where + r" (is not a ciphertext|failed its integrity check"
        r"|was written under key version [0-9]+, not configured)",
        message,
    ), message


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


# --- encryption -------------------------------------------------------------------------------


@given(values, uids)
def test_round_trip(value, uid):
    where = {**WHERE, "row": uid}
    stored = CIPHER.encrypt(value, **where)
    assert stored.startswith("v1:")
    assert CIPHER.decrypt(stored, **where) == value
    assert FieldCipher.version_of(stored) == 1


@given(values)
def test_the_plaintext_is_not_in_the_stored_value(value):
    stored = CIPHER.encrypt("13812345678" + value, **WHERE)
    assert "13812345678" not in stored
    raw = base64.b64decode(stored[3:])
    assert b"13812345678" not in raw
    assert len(raw) == NONCE_BYTES + len(("13812345678" + value).encode()) + 16


@given(values)
def test_two_encryptions_of_one_value_differ(value):
    first, second = (CIPHER.encrypt(value, **WHERE) for _ in range(2))
    assert first != second
    assert base64.b64decode(first[3:])[:NONCE_BYTES] != base64.b64decode(second[3:])[:NONCE_BYTES]
    assert CIPHER.decrypt(first, **WHERE) == CIPHER.decrypt(second, **WHERE) == value


@given(values, uids, uids)
def test_a_ciphertext_moved_to_another_row_does_not_decrypt(value, uid, other):
    if uid == other:
        return
    stored = CIPHER.encrypt(value, **{**WHERE, "row": uid})
    with pytest.raises(CiphertextError):
        CIPHER.decrypt(stored, **{**WHERE, "row": other})


@pytest.mark.parametrize(
    "elsewhere",
    [
        {"column": "id_number"},
        {"table": "special_group_records", "column": "notes"},
        {"table": "users"},
        {"row": WHERE["row"][:-1]},
        {"row": WHERE["row"] + "0"},
    ],
)
def test_a_ciphertext_moved_to_another_column_or_table_does_not_decrypt(elsewhere):
    stored = CIPHER.encrypt("13812345678", **WHERE)
    with pytest.raises(CiphertextError) as info:
        CIPHER.decrypt(stored, **{**WHERE, **elsewhere})
    assert "13812345678" not in str(info.value)


@given(values, st.data())
def test_any_flipped_bit_of_the_raw_bytes_is_detected(value, data):
    stored = CIPHER.encrypt(value, **WHERE)
    raw = bytearray(base64.b64decode(stored[3:]))
    position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    raw[position] ^= 1 << bit
    tampered = "v1:" + base64.b64encode(bytes(raw)).decode()
    with pytest.raises(CiphertextError):
        CIPHER.decrypt(tampered, **WHERE)


@given(values, st.data())
def test_any_changed_character_is_detected(value, data):
    stored = CIPHER.encrypt(value, **WHERE)
    position = data.draw(st.integers(min_value=0, max_value=len(stored) - 1))
    replacement = data.draw(st.sampled_from(B64 + "=:v2 "))
    tampered = stored[:position] + replacement + stored[position + 1 :]
    # Another spelling of the same bytes is test_changing_the_last_base64_character_is_detected.
    assume(replacement != stored[position] and not same_bytes(stored, tampered))
    with pytest.raises(CiphertextError) as info:
        CIPHER.decrypt(tampered, **WHERE)
    assert_no_echo(str(info.value))


def same_bytes(stored: str, tampered: str) -> bool:
    """Whether ``tampered`` is only another base64 spelling of the bytes of ``stored``."""
    try:
        return tampered[:3] == stored[:3] and base64.b64decode(
            tampered[3:], validate=True
        ) == base64.b64decode(stored[3:])
    except ValueError:
        return False


def test_changing_the_last_base64_character_is_detected():
    # An ID number: 12 + 18 + 16 = 46 bytes, so the last character before "==" carries four
    # spare bits; a change of only those bits decodes to the same bytes and must still fail.
    stored = CIPHER.encrypt("320508199001011234", **WHERE)
    assert stored.endswith("==")
    last = len(stored) - 3
    other = B64[B64.index(stored[last]) ^ 1]
    tampered = stored[:last] + other + stored[last + 1 :]
    assert same_bytes(stored, tampered)
    with pytest.raises(CiphertextError):
        CIPHER.decrypt(tampered, **WHERE)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "v1",
        "v1:",
        "13812345678",
        "x1:AAAA",
        "v:AAAA",
        "v1:not base64!",
        "v1:" + base64.b64encode(b"short").decode(),
        "v1:" + base64.b64encode(bytes(range(40))).decode(),
    ],
)
def test_malformed_values_are_rejected_without_echo(stored):
    with pytest.raises(CiphertextError) as info:
        CIPHER.decrypt(stored, **WHERE)
    assert_no_echo(str(info.value))


def test_unknown_key_version_is_rejected():
    stored = FieldCipher({1: K1, 2: K2}).encrypt("13812345678", **WHERE)
    assert stored.startswith("v2:")
    with pytest.raises(CiphertextError) as info:
        CIPHER.decrypt(stored, **WHERE)
    assert "version 2" in str(info.value)
    # The same bytes relabelled as version 1 fail the integrity check instead.
    with pytest.raises(CiphertextError):
        CIPHER.decrypt("v1:" + stored[3:], **WHERE)


def test_rotation_keeps_old_versions_decryptable():
    old = FieldCipher({1: K1})
    written_v1 = old.encrypt("320508199001011234", **WHERE)
    rotated = FieldCipher({1: K1, 2: K2})
    assert rotated.current_version == 2
    assert rotated.decrypt(written_v1, **WHERE) == "320508199001011234"
    written_v2 = rotated.encrypt("320508199001011234", **WHERE)
    assert written_v2.startswith("v2:")
    assert rotated.decrypt(written_v2, **WHERE) == "320508199001011234"
    # Version numbers, not order in the configuration, decide which key is current.
    assert FieldCipher({2: K2, 1: K1}).current_version == 2
    # A server still on the old keys cannot read the new values...
    with pytest.raises(CiphertextError):
        old.decrypt(written_v2, **WHERE)
    # ... and once the old key is dropped, values not yet re-encrypted cannot be read.
    new_only = FieldCipher({2: K2})
    assert new_only.decrypt(written_v2, **WHERE) == "320508199001011234"
    with pytest.raises(CiphertextError):
        new_only.decrypt(written_v1, **WHERE)


def test_a_key_under_another_version_number_does_not_decrypt():
    stored = FieldCipher({1: K1}).encrypt("13812345678", **WHERE)
    with pytest.raises(CiphertextError):
        FieldCipher({1: K3}).decrypt(stored, **WHERE)


@pytest.mark.parametrize("text", ["v12:abc", "v0:", "v7:x:y"])
def test_version_of(text):
    assert FieldCipher.version_of(text) == int(text[1 : text.index(":")])


@pytest.mark.parametrize("text", ["", "12:abc", "vx:abc", "v:abc", "V1:abc"])
def test_version_of_non_ciphertexts(text):
    assert FieldCipher.version_of(text) is None


# --- key configuration ------------------------------------------------------------------------


def test_parse_keys():
    keys = parse_keys(f"1:{b64(K1)}, 2:{b64(K2)} ,")
    assert keys == {1: K1, 2: K2}


@given(st.integers(min_value=1, max_value=10**6))
def test_new_key_text_parses(version):
    text = new_key_text(version)
    keys = parse_keys(text)
    assert list(keys) == [version]
    assert len(keys[version]) == KEY_BYTES
    assert new_key_text(version) != text


def test_new_keys_are_random():
    assert len({new_key_text(1) for _ in range(20)}) == 20


# Fixed (not random) so that the test ids agree between pytest-xdist workers.
SHORT = b64(bytes(range(16)))
LONG = b64(bytes(range(48)))
SECRET = b64(bytes(range(100, 100 + KEY_BYTES)))


@pytest.mark.parametrize(
    ("text", "secret", "expected"),
    [
        (f"1:{SHORT}", SHORT, "16 bytes, not 32"),
        (f"1:{LONG}", LONG, "48 bytes, not 32"),
        (f"1:{SECRET[:-2]}!!", SECRET[:-2], "not valid base64"),
        (f"1:{SECRET[:-1]}", SECRET[:-1], "not valid base64"),
        (f"1:{SECRET},1:{b64(K2)}", SECRET, "appears twice"),
        (f"0:{SECRET}", SECRET, "not positive"),
        (f"-1:{SECRET}", SECRET, "<version>:<base64"),
        (f"a:{SECRET}", SECRET, "<version>:<base64"),
        (SECRET, SECRET, "<version>:<base64"),
        (f"v1:{SECRET}", SECRET, "<version>:<base64"),
        ("", None, "no key given"),
        (" , ,", None, "no key given"),
    ],
)
def test_parse_keys_rejects_bad_formats_without_the_key(text, secret, expected):
    with pytest.raises(KeyConfigError) as info:
        parse_keys(text)
    message = str(info.value)
    assert expected in message
    if secret:
        assert secret not in message
        assert secret[:8] not in message
        assert text not in message


def test_key_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_keys("nonsense")


# --- blind indexes ----------------------------------------------------------------------------


def test_blind_index_is_keyed_deterministic_and_kind_bound():
    digest = blind_index("phone", "13812345678", K1)
    assert digest == blind_index("phone", "13812345678", K1)
    assert len(digest) == 64
    assert "13812345678" not in digest
    assert digest != blind_index("phone", "13812345678", K2)
    assert digest != blind_index("id_number", "13812345678", K1)
    assert digest != blind_index("phone", "13812345679", K1)
