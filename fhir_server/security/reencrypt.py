"""The re-encryption job: every encrypted value moved to the key ring's current key (R24).

Why a job of its own: after a rotation (``KeyRing.rotate``) new writes use the new key, but the
values already stored stay under the old one until rewritten; a key may be retired (and later
destroyed) only once nothing uses it. The job walks the current rows and the history rows of the
types with encrypted fields, the accounts' TOTP secrets and the clients' signing secrets, in key order, a batch per
transaction: resumable by running it again (a value already under the current key is left as it
is), and safe beside the server (a current row changed meanwhile is skipped: its writer already
used the current key).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, and_, select, tuple_, update

from fhir_server.formats import json as fjson
from fhir_server.security import crypto
from fhir_server.security.keyring import KeyRing, KeyRingError
from fhir_server.security.signing import secret_aad
from fhir_server.security.users import totp_aad
from fhir_server.storage.engine import begin_write
from fhir_server.storage.schema import auth_clients, auth_users, resource_history, resources

_KID = re.compile(rb"enc1\.([A-Za-z0-9_-]{1,64})\.")
TYPES = tuple(sorted(crypto.SENSITIVE_PATHS))


@dataclass
class Progress:
    rows: int = 0
    changed: int = 0


def reencrypt_all(
    engine: Engine, ring: KeyRing, batch_size: int = 500, progress: Callable[[int], None] | None = None
) -> Progress:
    """Move every encrypted value to ``ring.current``; what was read and what was rewritten."""
    done = Progress()
    for table in (resources, resource_history):
        after: tuple[int, int] = (0, 0)
        while True:
            with begin_write(engine) as conn:
                rows = conn.execute(
                    select(table.c.rid, table.c.version, table.c.content)
                    .where(
                        table.c.res_type.in_(TYPES),
                        table.c.content.is_not(None),
                        tuple_(table.c.rid, table.c.version) > tuple_(*after),
                    )
                    .order_by(table.c.rid, table.c.version)
                    .limit(batch_size)
                ).all()
                if not rows:
                    break
                for row in rows:
                    resource, changed = crypto.reencrypt_resource(ring, fjson.loads(row.content))
                    if changed:
                        done.changed += conn.execute(
                            update(table)
                            .where(and_(table.c.rid == row.rid, table.c.version == row.version))
                            .values(content=fjson.dumps(resource))
                        ).rowcount
                after = (rows[-1].rid, rows[-1].version)
            done.rows += len(rows)
            if progress is not None:
                progress(len(rows))
    with begin_write(engine) as conn:
        for username, secret in conn.execute(
            select(auth_users.c.username, auth_users.c.totp_secret).where(auth_users.c.totp_secret.is_not(None))
        ).all():
            aad = totp_aad(username)
            fresh = (
                crypto.reencrypt(ring, secret, aad) if crypto.is_token(secret) else crypto.encrypt(ring, secret, aad)
            )
            if fresh is not None:
                conn.execute(update(auth_users).where(auth_users.c.username == username).values(totp_secret=fresh))
                done.changed += 1
        for client_id, secret in conn.execute(
            select(auth_clients.c.client_id, auth_clients.c.signing_secret).where(
                auth_clients.c.signing_secret.is_not(None)
            )
        ).all():
            fresh = crypto.reencrypt(ring, secret, secret_aad(client_id))
            if fresh is not None:
                conn.execute(
                    update(auth_clients).where(auth_clients.c.client_id == client_id).values(signing_secret=fresh)
                )
                done.changed += 1
    return done


def values_by_key(engine: Engine) -> Counter[str]:
    """How many stored values each kid encrypts (current rows, history, signing secrets)."""
    found: Counter[str] = Counter()
    with engine.connect() as conn:
        conn = conn.execution_options(stream_results=True, yield_per=1000)  # never all rows in memory
        for table in (resources, resource_history):
            for (content,) in conn.execute(
                select(table.c.content).where(table.c.res_type.in_(TYPES), table.c.content.is_not(None))
            ):
                found.update(kid.decode() for kid in _KID.findall(bytes(content)))
        for (secret,) in conn.execute(
            select(auth_clients.c.signing_secret).where(auth_clients.c.signing_secret.is_not(None))
        ):
            found[crypto.token_kid(secret)] += 1
        for (secret,) in conn.execute(select(auth_users.c.totp_secret).where(auth_users.c.totp_secret.is_not(None))):
            if crypto.is_token(secret):
                found[crypto.token_kid(secret)] += 1
    return found


def retire(engine: Engine, ring: KeyRing, kid: str) -> None:
    """Retire ``kid`` once no stored value uses it (else ``KeyRingError`` says how many do)."""
    left = values_by_key(engine).get(kid, 0)
    if left:
        raise KeyRingError(f"{left} stored values still use {kid}: run `fhir-server keys reencrypt` first")
    ring.retire(kid)
