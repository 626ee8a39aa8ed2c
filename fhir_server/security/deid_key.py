"""The platform's de-identification secret (the HMAC key of ``deidentify.pseudonym``).

Why a key of its own: pseudonyms must be stable across restarts and workers (the same patient,
the same pseudonym within one consultation) and unlinkable without the key. It comes from
``FHIR_SERVER_DEIDENTIFY_KEY`` (hex, ≥ 32 bytes; every node of a cluster needs the same one) or
from ``<data-dir>/keys/deidentify.key`` (32 random bytes, made on first use, mode 0600 in a 0700
folder, written atomically).
"""

from __future__ import annotations

import os
import pathlib
import secrets

ENV = "FHIR_SERVER_DEIDENTIFY_KEY"


def deidentify_key(data_dir: pathlib.Path) -> bytes:
    given = os.environ.get(ENV)
    if given:
        key = bytes.fromhex(given)
        if len(key) < 32:
            raise ValueError(f"{ENV} must be at least 32 bytes (64 hex digits)")
        return key
    path = pathlib.Path(data_dir) / "keys" / "deidentify.key"
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_bytes(32))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(temporary, path)  # the first process to make it wins; the others read its key
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return path.read_bytes()
