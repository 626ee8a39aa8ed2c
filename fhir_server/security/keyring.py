"""The key ring for field encryption at rest (MISSION.md R24; issue 5 §6): data-encryption keys
with rotation, the blind-index key and the statistics key, kept in one JSON file.

Why one file: the three kinds of secret are backed up, restored and moved together; losing any
one of them loses data (ciphertexts), search (blind indexes) or comparability (statistics).

Data-encryption keys (AES-256, 32 random bytes, NIST SP 800-38D) each have a ``kid``, a
``created`` time (UTC) and a ``retired`` flag. Their life follows NIST SP 800-57 Part 1 rev. 5
§5.3: the newest active key *encrypts* (the originator-usage period, at most 90 days here — R24),
older keys only *decrypt* until the re-encryption job has moved every value off them
(``fhir_server.security.crypto.reencrypt_resource``); then the integration, having checked that
no value still names the kid, ``retire``\\ s it. A retired key still decrypts (a value restored
from an older backup must stay readable); it is the marker that destroying it is safe.

The blind-index key and the statistics key are separate 32-byte secrets that ``rotate`` does not
touch: a blind index is an HMAC of the clear value (``crypto.blind_index``), so a new key would
invalidate every stored index until a full re-index, and a statistics hash must be stable across
exports, so a new key would make earlier exports incomparable with later ones. Replacing either
is a deliberate migration, not routine rotation.

File format (``telefhir-field-keys/1``)::

    {"format": "telefhir-field-keys/1",
     "data_keys": [{"kid": "20250101-3fa2c1d0", "created": "2025-01-01T00:00:00Z",
                    "retired": false, "key": "<base64url, 32 bytes>"}, ...],
     "blind_index_key": "<base64url, 32 bytes>", "statistics_key": "<base64url, 32 bytes>"}

On disk the file has mode 0600 inside a folder created with mode 0700, and is written atomically
(temporary file in the same folder, fsync, ``os.replace``, fsync of the folder — POSIX
``rename(2)`` is atomic within a file system), so a crash mid-rotation leaves the old ring or the
new one, never half of one. A key file readable by group or others is refused on load, as
OpenSSH refuses a private key with loose permissions.

Deployments that keep secrets out of the data folder may pass the same JSON in an environment
variable (``KeyRing.from_env``); such a ring is read-only: it cannot rotate, because there is no
place to write the new key to before values are encrypted under it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import pathlib
import re
import secrets
import stat
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

FORMAT = "telefhir-field-keys/1"
KEY_BYTES = 32
#: R24: data-encryption keys are rotated at least every 90 days.
DEFAULT_MAX_AGE = timedelta(days=90)
#: A kid appears inside encrypted tokens (``enc1.<kid>.<data>``), so it may not contain ``.``.
KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
FILE_MODE = 0o600
FOLDER_MODE = 0o700


class KeyRingError(Exception):
    """The key file is missing, unreadable, malformed or too open, or an operation is refused."""


class UnknownKeyError(KeyRingError, LookupError):
    """No data-encryption key with this kid is in the ring."""


@dataclass
class DataKey:
    """One AES-256 data-encryption key."""

    kid: str
    key: bytes
    #: aware, UTC
    created: datetime
    retired: bool = False


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode_key(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise KeyRingError(f"{what}: expected a base64url string")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise KeyRingError(f"{what}: not base64url ({exc})") from exc
    if len(raw) != KEY_BYTES:
        raise KeyRingError(f"{what}: expected {KEY_BYTES} bytes, found {len(raw)}")
    return raw


def _utc(moment: datetime, what: str) -> datetime:
    """Rotation compares times across processes and hosts: only aware datetimes are accepted."""
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be an aware datetime (UTC), not {moment!r}")
    return moment.astimezone(UTC)


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: Any, what: str) -> datetime:
    if not isinstance(text, str) or not text.endswith("Z"):
        raise KeyRingError(f"{what}: expected an RFC 3339 UTC time ending in 'Z', found {text!r}")
    try:
        return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    except ValueError as exc:
        raise KeyRingError(f"{what}: {exc}") from exc


def _new_kid(now: datetime, taken: set[str]) -> str:
    """Date first so a kid says roughly how old the key is; random suffix so two rotations on one
    day (or on two hosts) cannot collide."""
    while True:
        kid = f"{now:%Y%m%d}-{secrets.token_hex(4)}"
        if kid not in taken:
            return kid


class KeyRing:
    """Data-encryption keys plus the blind-index and statistics keys; see the module docstring.

    Not safe for two writers at once: rotation is an operator action (``fhir-server keys``), run
    from one place. Readers in other processes pick up a rotation with ``refresh``.
    """

    def __init__(
        self,
        data_keys: list[DataKey],
        blind_index_key: bytes,
        statistics_key: bytes,
        *,
        path: pathlib.Path | None = None,
        read_only: bool = False,
    ) -> None:
        if not data_keys:
            raise KeyRingError("a key ring needs at least one data-encryption key")
        kids = [k.kid for k in data_keys]
        if len(set(kids)) != len(kids):
            raise KeyRingError(f"duplicate kid in the key ring: {sorted(kids)}")
        for key in data_keys:
            if not KID_PATTERN.fullmatch(key.kid):
                raise KeyRingError(f"kid {key.kid!r} must match {KID_PATTERN.pattern}")
            if len(key.key) != KEY_BYTES:
                raise KeyRingError(f"key {key.kid}: expected {KEY_BYTES} bytes")
        if not any(not k.retired for k in data_keys):
            raise KeyRingError("every data-encryption key is retired: nothing can encrypt")
        for name, secret in (("blind-index key", blind_index_key), ("statistics key", statistics_key)):
            if len(secret) != KEY_BYTES:
                raise KeyRingError(f"{name}: expected {KEY_BYTES} bytes")
        if blind_index_key == statistics_key:
            raise KeyRingError("the blind-index key and the statistics key must differ")
        self._keys: dict[str, DataKey] = {k.kid: k for k in data_keys}
        self.blind_index_key = blind_index_key
        self.statistics_key = statistics_key
        self.path = path
        self.read_only = read_only
        self._file_signature: tuple[int, int, int] | None = None

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def generate(cls, now: datetime | None = None) -> KeyRing:
        """A new ring in memory only (nothing written): one data key and the two hashing keys."""
        created = _utc(now, "now") if now is not None else datetime.now(UTC)
        first = DataKey(_new_kid(created, set()), secrets.token_bytes(KEY_BYTES), created)
        return cls([first], secrets.token_bytes(KEY_BYTES), secrets.token_bytes(KEY_BYTES))

    @classmethod
    def create(cls, path: str | os.PathLike[str], now: datetime | None = None) -> KeyRing:
        """Generate a ring and write it to ``path``; refuses to overwrite an existing file (that
        would destroy the only keys able to decrypt what is stored)."""
        target = pathlib.Path(path)
        if target.exists():
            raise FileExistsError(f"key file {target} exists; refusing to overwrite it")
        ring = cls.generate(now)
        ring.path = target
        ring.save()
        return ring

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyRing:
        target = pathlib.Path(path)
        try:
            with open(target, "rb") as handle:
                info = os.fstat(handle.fileno())
                if os.name == "posix" and info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                    raise KeyRingError(
                        f"key file {target} is accessible by group or others "
                        f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {target}"
                    )
                raw = handle.read()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise KeyRingError(f"cannot read key file {target}: {exc}") from exc
        ring = cls._from_json(raw, str(target))
        ring.path = target
        ring._file_signature = (info.st_ino, info.st_mtime_ns, info.st_size)
        return ring

    @classmethod
    def open(cls, path: str | os.PathLike[str], now: datetime | None = None) -> KeyRing:
        """Load the ring at ``path``, or create it there when there is no file yet."""
        try:
            return cls.load(path)
        except FileNotFoundError:
            return cls.create(path, now)

    @classmethod
    def from_env(cls, value: str) -> KeyRing:
        """A read-only ring from the JSON held in an environment variable (same format as the
        file): for deployments that keep secrets out of the data folder."""
        if not value or not value.strip():
            raise KeyRingError("the key environment variable is empty")
        return cls._from_json(value.encode("utf-8"), "environment", read_only=True)

    @classmethod
    def _from_json(cls, raw: bytes, source: str, *, read_only: bool = False) -> KeyRing:
        try:
            document = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeyRingError(f"key ring from {source} is not JSON: {exc}") from exc
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise KeyRingError(f'key ring from {source}: expected "format": "{FORMAT}"')
        entries = document.get("data_keys")
        if not isinstance(entries, list) or not entries:
            raise KeyRingError(f'key ring from {source}: "data_keys" must be a non-empty list')
        data_keys = []
        for index, entry in enumerate(entries):
            where = f"key ring from {source}, data_keys[{index}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
                raise KeyRingError(f'{where}: expected an object with a string "kid"')
            retired = entry.get("retired", False)
            if not isinstance(retired, bool):
                raise KeyRingError(f'{where}: "retired" must be true or false')
            data_keys.append(
                DataKey(
                    kid=entry["kid"],
                    key=_b64decode_key(entry.get("key"), f"{where}.key"),
                    created=_parse_time(entry.get("created"), f"{where}.created"),
                    retired=retired,
                )
            )
        return cls(
            data_keys,
            _b64decode_key(document.get("blind_index_key"), f"key ring from {source}: blind_index_key"),
            _b64decode_key(document.get("statistics_key"), f"key ring from {source}: statistics_key"),
            read_only=read_only,
        )

    # -- persistence --------------------------------------------------------------------------

    def to_json(self) -> str:
        """The ring as JSON (the file format; also the value for ``from_env``)."""
        document = {
            "format": FORMAT,
            "data_keys": [
                {"kid": k.kid, "created": _format_time(k.created), "retired": k.retired, "key": _b64encode(k.key)}
                for k in self._keys.values()
            ],
            "blind_index_key": _b64encode(self.blind_index_key),
            "statistics_key": _b64encode(self.statistics_key),
        }
        return json.dumps(document, indent=2) + "\n"

    def save(self) -> None:
        """Write the ring to its file atomically (temp file, fsync, rename, fsync of the folder)."""
        if self.read_only:
            raise KeyRingError("this key ring is read-only (loaded from the environment)")
        if self.path is None:
            raise KeyRingError("this key ring has no file to save to")
        folder = self.path.parent
        if not folder.exists():
            folder.mkdir(parents=True, mode=FOLDER_MODE)
            os.chmod(folder, FOLDER_MODE)  # mkdir's mode is filtered by the umask
        payload = self.to_json().encode("utf-8")
        # mkstemp creates the file with mode 0600 (O_EXCL): the keys are never briefly readable.
        handle, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(payload)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp_name, FILE_MODE)
            os.replace(temp_name, self.path)
        except BaseException:
            try:
                os.unlink(temp_name)
            except FileNotFoundError:
                pass
            raise
        if os.name == "posix":
            folder_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(folder_fd)
            finally:
                os.close(folder_fd)
        info = os.stat(self.path)
        self._file_signature = (info.st_ino, info.st_mtime_ns, info.st_size)

    def refresh(self) -> bool:
        """Reload from the file when another process (the rotating CLI) replaced it; True if it
        did. A worker that meets an unknown kid calls this before giving up."""
        if self.path is None or self.read_only:
            return False
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return False
        if (info.st_ino, info.st_mtime_ns, info.st_size) == self._file_signature:
            return False
        fresh = KeyRing.load(self.path)
        self._keys = fresh._keys
        self.blind_index_key = fresh.blind_index_key
        self.statistics_key = fresh.statistics_key
        self._file_signature = fresh._file_signature
        return True

    # -- keys ---------------------------------------------------------------------------------

    @property
    def current(self) -> DataKey:
        """The key that encrypts: the newest one not retired."""
        active = [k for k in self._keys.values() if not k.retired]
        return max(active, key=lambda k: k.created)

    @property
    def data_keys(self) -> list[DataKey]:
        """All data-encryption keys, oldest first."""
        return sorted(self._keys.values(), key=lambda k: k.created)

    def key(self, kid: str) -> bytes:
        """The key material for ``kid`` (retired keys included: they still decrypt)."""
        try:
            return self._keys[kid].key
        except KeyError:
            raise UnknownKeyError(f"no data-encryption key with kid {kid!r} in the key ring") from None

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def rotate(self, now: datetime | None = None) -> str:
        """Add a new data-encryption key, which becomes the current one; returns its kid.

        Saved at once when the ring has a file: a value must never be stored under a key that is
        not yet on disk. The blind-index and statistics keys are not rotated (module docstring).
        """
        if self.read_only:
            raise KeyRingError("cannot rotate a read-only key ring (loaded from the environment)")
        moment = _utc(now, "now") if now is not None else datetime.now(UTC)
        if moment <= self.current.created:
            # Keeps "newest created" unambiguous as the current key.
            raise KeyRingError(f"rotation time {moment} is not after the current key's {self.current.created}")
        kid = _new_kid(moment, set(self._keys))
        self._keys[kid] = DataKey(kid, secrets.token_bytes(KEY_BYTES), moment)
        if self.path is not None:
            self.save()
        return kid

    def rotation_due(self, now: datetime | None = None, max_age: timedelta = DEFAULT_MAX_AGE) -> bool:
        """True when the current key is ``max_age`` old or older (R24: at most 90 days)."""
        moment = _utc(now, "now") if now is not None else datetime.now(UTC)
        return moment - self.current.created >= max_age

    def retire(self, kid: str) -> None:
        """Mark ``kid`` retired: no value uses it any more (the caller has checked), so it may be
        destroyed later. The current key cannot be retired — rotate first, re-encrypt, then retire.
        Saved at once when the ring has a file."""
        if self.read_only:
            raise KeyRingError("cannot retire a key in a read-only key ring (loaded from the environment)")
        if kid not in self._keys:
            raise UnknownKeyError(f"no data-encryption key with kid {kid!r} in the key ring")
        if kid == self.current.kid:
            raise KeyRingError(f"{kid} is the current key; rotate before retiring it")
        self._keys[kid].retired = True
        if self.path is not None:
            self.save()
