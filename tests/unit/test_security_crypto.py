"""Field encryption at rest: key ring file and rotation, AES-256-GCM tokens, blind indexes,
statistics hashes and the resource field policy (fhir_server.security.keyring / .crypto)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import stat
from datetime import UTC, datetime, timedelta

import pytest

from fhir_server.security import crypto
from fhir_server.security.crypto import (
    DecryptionError,
    blind_index,
    decrypt,
    decrypt_resource,
    encrypt,
    encrypt_resource,
    is_token,
    reencrypt,
    reencrypt_resource,
    sensitive_values,
    statistics_hash,
)
from fhir_server.security.keyring import KeyRing, KeyRingError, UnknownKeyError

T0 = datetime(2025, 1, 1, 8, 0, tzinfo=UTC)
AAD = "Patient/p1#identifier.value"


@pytest.fixture
def key_path(tmp_path):
    return tmp_path / "data" / "keys" / "field-keys.json"


@pytest.fixture
def ring(key_path):
    return KeyRing.create(key_path, now=T0)


def _flip(token: str, position: int) -> str:
    """The token with one bit of its decoded data flipped."""
    prefix, kid, data = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    raw[position] ^= 0x01
    return f"{prefix}.{kid}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"


def _patient() -> dict:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "3", "lastUpdated": "2025-01-01T08:00:00Z"},
        "extension": [{"url": "http://example.org/ethnicity", "valueString": "汉族"}],
        "identifier": [
            {"system": "urn:oid:2.16.156.10011.1.3", "value": "11010519491231002X"},
            {"system": "http://hospital.example/mrn", "value": "MRN-0042", "type": {"text": "MR"}},
        ],
        "name": [{"family": "王", "given": ["小明"], "text": "王小明"}],
        "telecom": [{"system": "phone", "value": "13800138000", "use": "mobile"}, {"system": "email"}],
        "gender": "male",
        "birthDate": "1949-12-31",
        "address": [
            {
                "line": ["朝阳区建国路88号", None, "3单元501"],
                "_line": [None, {"extension": [{"url": "http://example.org/x", "valueString": "e"}]}, None],
                "text": "北京市朝阳区建国路88号3单元501",
                "city": "北京市",
                "district": "朝阳区",
                "postalCode": "100022",
            }
        ],
        "contact": [{"name": {"text": "李华"}, "telecom": [{"system": "phone", "value": "13900139000"}]}],
    }


# -- key ring ------------------------------------------------------------------------------------


def test_key_file_is_private_and_reloads_equal(ring, key_path):
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key_path.parent).st_mode) == 0o700
    document = json.loads(key_path.read_text())
    assert document["format"] == "telefhir-field-keys/1"
    assert len(document["data_keys"]) == 1
    reloaded = KeyRing.load(key_path)
    assert reloaded.to_json() == ring.to_json()
    assert reloaded.current.kid == ring.current.kid and reloaded.current.key == ring.current.key
    assert reloaded.current.created == T0
    assert len({ring.current.key, ring.blind_index_key, ring.statistics_key}) == 3
    assert all(len(k) == 32 for k in (ring.current.key, ring.blind_index_key, ring.statistics_key))


def test_save_is_atomic_and_leaves_no_temp_files(ring, key_path, monkeypatch):
    before = key_path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk gone"):
        ring.rotate(T0 + timedelta(days=1))
    monkeypatch.undo()
    assert key_path.read_bytes() == before  # the old ring, whole
    assert sorted(p.name for p in key_path.parent.iterdir()) == ["field-keys.json"]
    ring.save()
    assert sorted(p.name for p in key_path.parent.iterdir()) == ["field-keys.json"]
    assert KeyRing.load(key_path).to_json() == ring.to_json()


def test_create_refuses_to_overwrite_and_open_loads_or_creates(ring, key_path, tmp_path):
    with pytest.raises(FileExistsError):
        KeyRing.create(key_path)
    assert KeyRing.open(key_path).to_json() == ring.to_json()
    fresh = KeyRing.open(tmp_path / "other" / "keys.json", now=T0)
    assert (tmp_path / "other" / "keys.json").exists()
    assert fresh.current.key != ring.current.key


def test_loose_permissions_and_bad_files_are_refused(ring, key_path):
    os.chmod(key_path, 0o644)
    with pytest.raises(KeyRingError, match="chmod 600"):
        KeyRing.load(key_path)
    os.chmod(key_path, 0o600)
    document = json.loads(key_path.read_text())
    document["data_keys"][0]["key"] = base64.urlsafe_b64encode(b"short").decode()
    key_path.write_text(json.dumps(document))
    with pytest.raises(KeyRingError, match="expected 32 bytes"):
        KeyRing.load(key_path)
    key_path.write_text("{not json")
    with pytest.raises(KeyRingError, match="not JSON"):
        KeyRing.load(key_path)
    with pytest.raises(FileNotFoundError):
        KeyRing.load(key_path.parent / "missing.json")


def test_rotation_due_after_90_days(ring):
    assert not ring.rotation_due(T0 + timedelta(days=89, hours=23))
    assert ring.rotation_due(T0 + timedelta(days=90))
    assert ring.rotation_due(T0 + timedelta(days=31), max_age=timedelta(days=30))
    ring.rotate(T0 + timedelta(days=90))
    assert not ring.rotation_due(T0 + timedelta(days=91))
    with pytest.raises(ValueError, match="aware"):
        ring.rotation_due(datetime(2025, 6, 1))


def test_rotation_keeps_old_values_readable_and_reencrypt_moves_them(ring, key_path):
    old_kid = ring.current.kid
    token = encrypt(ring, "11010519491231002X", AAD)
    new_kid = ring.rotate(T0 + timedelta(days=90))
    assert new_kid != old_kid and ring.current.kid == new_kid
    assert KeyRing.load(key_path).current.kid == new_kid  # saved at once
    assert decrypt(ring, token, AAD) == "11010519491231002X"
    moved = reencrypt(ring, token, AAD)
    assert moved is not None and crypto.token_kid(moved) == new_kid
    assert decrypt(ring, moved, AAD) == "11010519491231002X"
    assert reencrypt(ring, moved, AAD) is None
    assert crypto.token_kid(encrypt(ring, "x", AAD)) == new_kid


def test_retire_refuses_the_current_key_and_retired_keys_still_decrypt(ring, key_path):
    old_kid = ring.current.kid
    token = encrypt(ring, "value", AAD)
    with pytest.raises(KeyRingError, match="current key"):
        ring.retire(old_kid)
    ring.rotate(T0 + timedelta(days=1))
    ring.retire(old_kid)
    reloaded = KeyRing.load(key_path)
    assert [k.retired for k in reloaded.data_keys] == [True, False]
    assert decrypt(reloaded, token, AAD) == "value"
    with pytest.raises(UnknownKeyError):
        ring.retire("nope")
    with pytest.raises(KeyRingError, match="not after"):
        ring.rotate(T0)


def test_environment_ring_is_read_only(ring):
    token = encrypt(ring, "13800138000", "Patient/p1#telecom.value")
    from_env = KeyRing.from_env(ring.to_json())
    assert from_env.read_only
    assert decrypt(from_env, token, "Patient/p1#telecom.value") == "13800138000"
    with pytest.raises(KeyRingError, match="read-only"):
        from_env.rotate(T0 + timedelta(days=1))
    with pytest.raises(KeyRingError, match="read-only"):
        from_env.save()
    with pytest.raises(KeyRingError, match="empty"):
        KeyRing.from_env("  ")


def test_another_process_rotation_is_picked_up_on_unknown_kid(ring, key_path):
    writer = KeyRing.load(key_path)
    writer.rotate(T0 + timedelta(days=90))
    token = encrypt(writer, "MRN-0042", AAD)
    assert crypto.token_kid(token) not in ring
    assert decrypt(ring, token, AAD) == "MRN-0042"  # refreshed from the file
    assert ring.current.kid == writer.current.kid


# -- tokens --------------------------------------------------------------------------------------


def test_round_trip_and_fresh_nonce(ring):
    for text in ["11010519491231002X", "", "北京市朝阳区建国路88号 🏥", "a" * 5000]:
        token = encrypt(ring, text, AAD)
        assert is_token(token) and token.startswith(f"enc1.{ring.current.kid}.")
        assert decrypt(ring, token, AAD) == text
    assert encrypt(ring, "same", AAD) != encrypt(ring, "same", AAD)
    assert not is_token("13800138000") and not is_token(None) and not is_token("enc1.kid")


def test_tampered_ciphertext_kid_and_aad_fail(ring):
    token = encrypt(ring, "11010519491231002X", AAD)
    for position in (0, 12, 20, -1):  # nonce, ciphertext, tag
        with pytest.raises(DecryptionError, match="authentication failed"):
            decrypt(ring, _flip(token, position), AAD)
    with pytest.raises(DecryptionError, match="authentication failed"):
        decrypt(ring, token, "Patient/p2#identifier.value")
    with pytest.raises(DecryptionError, match="authentication failed"):
        decrypt(ring, token, "Patient/p1#telecom.value")
    with pytest.raises(DecryptionError, match="unknown key 'zz'"):
        decrypt(ring, token.replace(ring.current.kid, "zz"), AAD)
    other_kid = ring.rotate(T0 + timedelta(days=1))
    with pytest.raises(DecryptionError, match="authentication failed"):
        decrypt(ring, token.replace(crypto.token_kid(token), other_kid), AAD)
    with pytest.raises(DecryptionError, match="not an encrypted value"):
        decrypt(ring, "13800138000", AAD)
    with pytest.raises(DecryptionError, match="too short"):
        decrypt(ring, f"enc1.{other_kid}.AAAA", AAD)
    with pytest.raises(ValueError, match="aad"):
        encrypt(ring, "x", "")


# -- keyed hashes --------------------------------------------------------------------------------


def test_blind_index_is_deterministic_and_normalised(ring):
    purpose = "Patient.identifier"
    reference = blind_index(ring, "11010519491231002X", purpose)
    assert reference == blind_index(ring, "11010519491231002X", purpose)
    assert len(reference) == 43 and "=" not in reference  # 32 bytes, base64url unpadded
    assert blind_index(ring, "  11010519491231002x\t", purpose) == reference
    assert blind_index(ring, "１１０１０５１９４９１２３１００２Ｘ", purpose) == reference  # full-width
    assert blind_index(ring, "11010519491231002Y", purpose) != reference
    assert blind_index(ring, "1101051949 1231002X", purpose) != reference  # inner spaces are kept
    assert blind_index(ring, "11010519491231002X", "Patient.telecom") != reference
    assert crypto.normalise(" Straße ") == "strasse"
    other = KeyRing.generate(T0)
    assert blind_index(other, "11010519491231002X", purpose) != reference
    with pytest.raises(ValueError, match="purpose"):
        blind_index(ring, "x", "")


def test_statistics_hash_is_stable_keyed_and_unlike_the_blind_index(ring, key_path):
    system, value = "urn:oid:2.16.156.10011.1.3", "11010519491231002X"
    digest = statistics_hash(ring, system, value)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert statistics_hash(KeyRing.load(key_path), system, value) == digest  # stable across exports
    assert statistics_hash(ring, system, "11010519491231002x") == digest
    assert statistics_hash(ring, "http://hospital.example/mrn", value) != digest
    assert digest != hashlib.sha256(value.encode()).hexdigest()
    assert statistics_hash(KeyRing.generate(T0), system, value) != digest
    index = blind_index(ring, value, system)
    assert digest != index
    assert digest != base64.urlsafe_b64decode(index + "=").hex()
    ring.rotate(T0 + timedelta(days=90))  # rotation does not touch the statistics key
    assert statistics_hash(ring, system, value) == digest


# -- resources -----------------------------------------------------------------------------------


def test_encrypt_resource_encrypts_only_the_policy_paths_and_round_trips(ring):
    patient = _patient()
    original = copy.deepcopy(patient)
    stored = encrypt_resource(ring, patient)
    assert patient == original  # input untouched
    dumped = json.dumps(stored, ensure_ascii=False)
    for secret in ["11010519491231002X", "MRN-0042", "13800138000", "建国路88号", "3单元501", "13900139000"]:
        assert secret not in dumped
    for clear in ["王小明", "1949-12-31", "北京市", "朝阳区", "100022", "李华", "汉族", "urn:oid:2.16.156.10011.1.3"]:
        assert clear in dumped
    assert all(is_token(i["value"]) for i in stored["identifier"])
    assert stored["address"][0]["line"][1] is None and is_token(stored["address"][0]["line"][2])
    assert stored["address"][0]["_line"] == original["address"][0]["_line"]
    assert stored["telecom"][1] == {"system": "email"}
    for key in ["meta", "extension", "name", "gender", "birthDate"]:
        assert stored[key] == original[key]
    assert decrypt(ring, stored["identifier"][0]["value"], "Patient/p1#identifier.value") == "11010519491231002X"
    assert decrypt(ring, stored["address"][0]["text"], "Patient/p1#address.text") == original["address"][0]["text"]
    assert decrypt_resource(ring, stored) == original
    assert encrypt_resource(ring, stored) == stored  # tokens valid here are left alone


def test_other_types_and_missing_ids(ring):
    observation = {"resourceType": "Observation", "id": "o1", "status": "final", "valueString": "13800138000"}
    assert encrypt_resource(ring, observation) == observation
    related = {"resourceType": "RelatedPerson", "id": "r1", "telecom": [{"value": "13700137000"}]}
    assert is_token(encrypt_resource(ring, related)["telecom"][0]["value"])
    practitioner = {"resourceType": "Practitioner", "id": "d1", "identifier": [{"value": "110000000001"}]}
    assert is_token(encrypt_resource(ring, practitioner)["identifier"][0]["value"])
    no_id = _patient()
    del no_id["id"]
    with pytest.raises(ValueError, match="no id"):
        encrypt_resource(ring, no_id)
    bad = {"resourceType": "Patient", "id": "p1", "telecom": [{"value": 13800138000}]}
    with pytest.raises(ValueError, match="Patient.telecom.value must be a string"):
        encrypt_resource(ring, bad)


def test_a_token_moved_to_another_resource_does_not_decrypt(ring):
    stored = encrypt_resource(ring, _patient())
    stolen = stored["identifier"][0]["value"]
    other = {"resourceType": "Patient", "id": "p2", "identifier": [{"value": stolen}]}
    with pytest.raises(DecryptionError):
        decrypt_resource(ring, other)
    # Submitted by a client, the token is just a string: it is encrypted like any value and
    # reads back as the same string, never as p1's identifier.
    planted = encrypt_resource(ring, other)
    assert planted["identifier"][0]["value"] != stolen
    assert decrypt_resource(ring, planted)["identifier"][0]["value"] == stolen


def test_contained_people_are_encrypted_with_their_container(ring):
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "contained": [{"resourceType": "Patient", "id": "pat", "telecom": [{"value": "13800138000"}]}],
        "subject": {"reference": "#pat"},
    }
    stored = encrypt_resource(ring, observation)
    token = stored["contained"][0]["telecom"][0]["value"]
    assert decrypt(ring, token, "Observation/o1#contained/Patient/pat#telecom.value") == "13800138000"
    assert decrypt_resource(ring, stored) == observation


def test_reencrypt_resource_moves_everything_to_the_current_key(ring):
    original = _patient()
    stored = encrypt_resource(ring, original)
    new_kid = ring.rotate(T0 + timedelta(days=90))
    moved, changed = reencrypt_resource(ring, stored)
    assert changed
    tokens = [i["value"] for i in moved["identifier"]] + [moved["address"][0]["text"]]
    assert all(crypto.token_kid(t) == new_kid for t in tokens)
    assert decrypt_resource(ring, moved) == original
    again, changed_again = reencrypt_resource(ring, moved)
    assert not changed_again and again == moved
    legacy = {"resourceType": "Patient", "id": "p9", "telecom": [{"value": "13800138000"}]}
    assert decrypt_resource(ring, legacy) == legacy  # stored before encryption was on
    migrated, migrated_changed = reencrypt_resource(ring, legacy)
    assert migrated_changed and is_token(migrated["telecom"][0]["value"])


def test_sensitive_values_lists_clear_values_by_path():
    assert sensitive_values(_patient()) == [
        ("identifier.value", "11010519491231002X"),
        ("identifier.value", "MRN-0042"),
        ("telecom.value", "13800138000"),
        ("address.line", "朝阳区建国路88号"),
        ("address.line", "3单元501"),
        ("address.text", "北京市朝阳区建国路88号3单元501"),
        ("contact.telecom.value", "13900139000"),
    ]
    assert sensitive_values({"resourceType": "Observation", "id": "o1"}) == []
