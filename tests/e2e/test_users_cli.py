"""``fhir-server users`` and ``fhir-server clients`` as an administrator uses them."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pyotp

from fhir_server.security.signing import key_ring
from fhir_server.security.users import LoginOutcome, UserStore
from fhir_server.storage.engine import make_engine

FHIR_SERVER = str(pathlib.Path(sys.executable).with_name("fhir-server"))


def _run(tmp_path: pathlib.Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    group, command, *rest = args
    cmd = [FHIR_SERVER, group, command, "--data-dir", str(tmp_path), *rest]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)


def test_users_lifecycle(tmp_path: pathlib.Path) -> None:
    options = ("--role", "expert", "--organization", "Organization/o1", "--fhir-user", "Practitioner/p1")
    added = _run(tmp_path, "users", "add", "alice", "--password-stdin", *options, stdin="Str0ng-passw0rd!\n")
    assert added.returncode == 0, added.stderr
    listed = _run(tmp_path, "users", "list").stdout
    assert "alice\tPractitioner/p1\tOrganization/o1\texpert\tactive" in listed
    weak = _run(tmp_path, "users", "passwd", "alice", "--password-stdin", stdin="weak\n")
    assert weak.returncode == 1 and "at least 10" in weak.stderr
    uri = _run(tmp_path, "users", "totp", "alice").stdout.strip()
    assert uri.startswith("otpauth://totp/telefhir:alice")
    engine = make_engine(f"sqlite:///{tmp_path / 'fhir.db'}")
    with engine.connect() as conn:  # the secret is stored encrypted, not in base32
        (stored,) = conn.exec_driver_sql("SELECT totp_secret FROM auth_users WHERE username = 'alice'").one()
    assert stored.startswith("enc1.") and pyotp.parse_uri(uri).secret not in stored
    store = UserStore(engine, ring=key_ring(tmp_path))
    code = pyotp.parse_uri(uri).now()
    assert store.login("alice", "Str0ng-passw0rd!", totp=code, address="10.0.0.1").outcome == LoginOutcome.OK
    for _ in range(5):
        store.login("alice", "wrong-password", totp=None, address="10.0.0.1")
    assert "locked" in _run(tmp_path, "users", "list").stdout
    assert _run(tmp_path, "users", "unlock", "alice").returncode == 0
    assert "locked" not in _run(tmp_path, "users", "list").stdout
    assert _run(tmp_path, "users", "disable", "alice").returncode == 0
    assert "disabled" in _run(tmp_path, "users", "list").stdout
    assert _run(tmp_path, "users", "remove", "alice").returncode == 0
    assert _run(tmp_path, "users", "remove", "alice").returncode == 1


def test_clients_lifecycle(tmp_path: pathlib.Path) -> None:
    assert (
        _run(tmp_path, "clients", "add", "app1", "--secret", "s3cret-value", "--scope", "system/Patient.rs").returncode
        == 0
    )
    assert (
        "app1\tclient_secret_basic\tclient_credentials\tsystem/Patient.rs" in _run(tmp_path, "clients", "list").stdout
    )
    bad = _run(tmp_path, "clients", "add", "app2", "--scope", "system/Patient.zz", "--secret", "x")
    assert bad.returncode == 1 and "scope" in bad.stderr
    assert _run(tmp_path, "clients", "remove", "app1").returncode == 0
    assert _run(tmp_path, "clients", "remove", "app1").returncode == 1
