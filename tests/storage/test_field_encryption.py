"""People's identifiers, contact points and streets are encrypted at rest and searched by blind
indexes; keys rotate and stored values move to the new key (R24; security/fields.py). SQLite and
PostgreSQL, through the REST API in-process and the ``fhir-server keys`` command."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import fresh_database

FHIR_SERVER = str(pathlib.Path(sys.executable).with_name("fhir-server"))
ID_CARD = "11010519491231002X"
PHONE = "13800138000"
STREET = "朝阳区建国路88号"
SECRETS = (ID_CARD, PHONE, STREET, "zhang@example.cn")


def _patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NI"}]},
                "system": "urn:oid:2.16.156.10011.1.3",
                "value": ID_CARD,
            }
        ],
        "name": [{"family": "张", "given": ["三"]}],
        "telecom": [{"system": "phone", "value": PHONE}, {"system": "email", "value": "zhang@example.cn"}],
        "address": [{"line": [STREET], "city": "北京市", "district": "朝阳区"}],
    }


class Store:
    def __init__(self, url: str, data: pathlib.Path) -> None:
        self.url, self.data = url, data
        self.open()

    def open(self) -> None:
        from fhir_server.app import build_services, create_app
        from fhir_server.config import Settings

        settings = Settings(
            database_url=self.url, data_dir=self.data, base_url="http://t/fhir", auth=False, audit=False
        )
        self.services = build_services(settings)
        self.client = create_app(settings, self.services).test_client()

    def close(self) -> None:
        self.services.repo.dispose()

    def raw(self, sql: str) -> list[Any]:
        with self.services.repo.engine.connect() as conn:
            return conn.execute(text(sql)).all()

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "FHIR_SERVER_FIELD_KEYS"}
        where: tuple[str, ...] = ("--data-dir", str(self.data))
        if args[:2] != ("keys", "rotate"):
            where = ("--database-url", self.url, *where)
        cmd = [FHIR_SERVER, *args[:2], *where, *args[2:]]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, input=stdin)

    def keys(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("keys", *args)

    def ids(self, query: str) -> set[str]:
        body = self.client.get(f"/fhir/Patient?{query}").get_json()
        return {e["resource"]["id"] for e in body.get("entry", [])}


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    saved = os.environ.pop("FHIR_SERVER_FIELD_KEYS", None)  # a ring file of its own, which can rotate
    try:
        with fresh_database(request.param, tmp_path_factory) as url:
            s = Store(url, tmp_path_factory.mktemp("fields"))
            yield s
            s.close()
    finally:
        if saved is not None:
            os.environ["FHIR_SERVER_FIELD_KEYS"] = saved


@pytest.fixture(scope="module")
def pid(store: Store) -> str:
    resp = store.client.post("/fhir/Patient", json=_patient())
    assert resp.status_code == 201
    return str(resp.get_json()["id"])


def test_the_client_sees_clear_values_the_database_never_does(store: Store, pid: str) -> None:
    body = store.client.get(f"/fhir/Patient/{pid}").get_json()
    assert body["identifier"][0]["value"] == ID_CARD and body["telecom"][0]["value"] == PHONE
    assert body["address"][0]["line"] == [STREET] and body["address"][0]["city"] == "北京市"
    (content,) = store.raw(f"SELECT content FROM resources WHERE res_id = '{pid}'")[0]
    stored = bytes(content).decode()
    assert "enc1." in stored and "北京市" in stored and "张" in stored  # names and city stay in clear
    for secret in SECRETS:
        assert secret not in stored
    for table, columns in (("idx_token", "code, system, text"), ("idx_string", "value, exact")):
        for row in store.raw(
            f"SELECT {columns} FROM {table} t JOIN resources r ON r.rid = t.rid WHERE r.res_id = '{pid}'"
        ):
            for secret in SECRETS:
                assert all(secret.lower() not in str(cell or "").lower() for cell in row), (table, row)


def test_searches_by_blind_index(store: Store, pid: str) -> None:
    assert store.ids(f"identifier=urn:oid:2.16.156.10011.1.3|{ID_CARD}") == {pid}
    assert store.ids(f"identifier={ID_CARD.lower()}") == {pid}  # normalised: case and width
    assert store.ids("identifier=１３８００１３８０００") == set()  # another value entirely
    assert store.ids(f"phone={'１３８００１３８０００'}") == {pid}  # full-width digits are the same number
    assert store.ids(f"telecom={PHONE}") == {pid}
    assert store.ids("email=ZHANG@example.cn") == {pid}
    assert store.ids(f"identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|NI|{ID_CARD}") == {pid}
    assert store.ids(f"identifier:not={ID_CARD}&_id={pid}") == set()
    assert store.ids("address-city=北京") == {pid}
    assert store.ids("address=建国路") == set()  # a street is encrypted: not searchable


def test_history_is_encrypted_too(store: Store, pid: str) -> None:
    current = store.client.get(f"/fhir/Patient/{pid}").get_json()
    current["telecom"][0]["value"] = "13900139000"
    assert store.client.put(f"/fhir/Patient/{pid}", json=current).status_code == 200
    old = store.client.get(f"/fhir/Patient/{pid}/_history/1").get_json()
    assert old["telecom"][0]["value"] == PHONE
    (content,) = store.raw(f"SELECT content FROM resource_history WHERE res_id = '{pid}' AND version = 1")[0]
    assert PHONE not in bytes(content).decode()
    assert store.ids("phone=13900139000") == {pid} and store.ids(f"phone={PHONE}") == set()


def test_rotation_then_reencryption_then_retirement(store: Store, pid: str) -> None:
    added = store.cli("users", "add", "nurse", "--password-stdin", stdin="Str0ng-passw0rd!\n")
    assert added.returncode == 0 and store.cli("users", "totp", "nurse").returncode == 0, added.stderr
    before = store.keys("status")
    assert before.returncode == 0, before.stderr
    old_kid = before.stdout.split("\t", 1)[0]
    rotated = store.keys("rotate")
    assert rotated.returncode == 0, rotated.stderr
    refused = store.keys("retire", old_kid)
    assert refused.returncode != 0 and "still use" in refused.stderr
    done = store.keys("reencrypt", "--no-progress")
    assert done.returncode == 0 and "re-encrypted" in done.stdout, done.stderr
    status = store.keys("status").stdout
    assert f"{old_kid}\t" in status and "\t0 values" in status.split(old_kid, 1)[1].splitlines()[0]
    assert store.keys("retire", old_kid).returncode == 0
    store.close()
    store.open()  # a server started afterwards: the rotated ring, values under the new key
    body = store.client.get(f"/fhir/Patient/{pid}").get_json()
    assert body["identifier"][0]["value"] == ID_CARD
    assert store.ids(f"identifier={ID_CARD}") == {pid}
    for (content,) in store.raw("SELECT content FROM resources WHERE res_type = 'Patient'"):
        assert f"enc1.{old_kid}." not in bytes(content).decode()
    ((totp,),) = store.raw("SELECT totp_secret FROM auth_users WHERE username = 'nurse'")
    assert totp.startswith("enc1.") and not totp.startswith(f"enc1.{old_kid}.")
