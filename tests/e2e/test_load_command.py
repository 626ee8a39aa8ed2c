"""``fhir-server load``: Bundles and NDJSON from files, rejects reported, loading goes on."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import pathlib
import subprocess
import sys

from tests.conftest import shared_data

FHIR_SERVER = str(pathlib.Path(sys.executable).with_name("fhir-server"))


def _load(db: str, *files: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FHIR_SERVER, "load", "--no-progress", "--database-url", db, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_load_synthea_bundles(tmp_path: pathlib.Path) -> None:
    folder = shared_data("fhir", "synthea")
    files = (
        sorted(folder.glob("0-*.json.bz2"))
        + sorted(f for f in folder.glob("*.json.bz2") if not f.name.startswith("0-"))[:3]
    )
    expected = sum(len(json.loads(bz2.decompress(f.read_bytes()))["entry"]) for f in files)
    db = f"sqlite:///{tmp_path / 'fhir.db'}"
    result = _load(db, *files)
    assert result.returncode == 0, result.stderr
    assert f"loaded {expected} resources, rejected 0" in result.stdout


def test_load_ndjson_reports_rejects_and_goes_on(tmp_path: pathlib.Path) -> None:
    lines = [
        json.dumps({"resourceType": "Patient", "id": "nd-1", "gender": "female"}),
        "{broken json",
        json.dumps({"resourceType": "Patient", "id": "nd-2", "gender": "robot"}),
        json.dumps(
            {
                "resourceType": "Observation",
                "id": "nd-3",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "Patient/nd-1"},
            }
        ),
    ]
    path = tmp_path / "data.ndjson.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    db = f"sqlite:///{tmp_path / 'fhir.db'}"
    result = _load(db, path)
    assert result.returncode == 0, result.stderr
    assert "loaded 2 resources, rejected 2" in result.stdout
    assert "line 2" in result.stdout and "line 3" in result.stdout
    again = _load(db, path)  # ids are kept, so loading twice updates instead of duplicating
    assert "loaded 2 resources" in again.stdout


def test_load_collection_bundle_streams(tmp_path: pathlib.Path) -> None:
    entries = [
        {"resource": {"resourceType": "Patient", "name": [{"family": f"C{i}"}], "id": f"c-{i}"}} for i in range(1200)
    ]
    path = tmp_path / "collection.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries}))
    result = _load(f"sqlite:///{tmp_path / 'fhir.db'}", path)
    assert "loaded 1200 resources, rejected 0" in result.stdout, result.stdout + result.stderr


def test_db_upgrade_command(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [FHIR_SERVER, "db", "upgrade", "--database-url", f"sqlite:///{tmp_path / 'x.db'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "database at revision 0015" in result.stdout


def test_options_read_fhir_server_environment_variables(tmp_path: pathlib.Path) -> None:
    """ARCHITECTURE.md: every option also reads FHIR_SERVER_<OPTION> (not click's per-command name)."""
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    env = {**os.environ, "FHIR_SERVER_DATABASE_URL": url}
    result = subprocess.run([FHIR_SERVER, "db", "upgrade"], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from-env.db").exists()
