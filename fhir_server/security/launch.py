"""SMART EHR launch: the patient (and encounter) an app is launched for.

http://hl7.org/fhir/smart-app-launch/app-launch.html#launch-app-ehr-launch. An EHR — the console,
or any system a person is signed in to — asks ``POST /auth/launch`` for an opaque ``launch`` id
naming the patient in front of that person (who must be able to see the patient), and opens the
app with ``launch`` and ``iss``. The app passes ``launch`` to ``/auth/authorize`` with the
``launch`` scope; the code, its access token and its refresh tokens then carry the context
(``patient``, ``encounter``), and ``patient/`` scopes are limited to that patient
(security/tenancy.py). A launch id is stored as its digest, works for the person who asked for it
only, and expires after an hour (long enough for a person to sign in to the app). A standalone
launch's patient (``launch/patient``, chosen on the picker: security/picker.py) needs no launch
id: the choice goes straight into the code's context, in the same shape.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine

from fhir_server.security import digest
from fhir_server.storage.engine import begin_write
from fhir_server.storage.schema import auth_launches as L
from fhir_server.util.clock import now_us

LIFETIME_US = 3600 * 1_000_000
#: the context parameters a launch may carry (SMART "launch context arrives with your access token")
CONTEXT_KEYS = ("patient", "encounter")


class LaunchContexts:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, username: str, context: dict[str, str]) -> str:
        launch = secrets.token_urlsafe(24)
        with begin_write(self.engine) as conn:
            conn.execute(delete(L).where(L.c.expires_us < now_us()))
            conn.execute(
                insert(L).values(
                    launch_hash=digest(launch),
                    username=username,
                    context=orjson.dumps({k: v for k, v in context.items() if k in CONTEXT_KEYS}).decode(),
                    expires_us=now_us() + LIFETIME_US,
                )
            )
        return launch

    def context(self, launch: str, username: str) -> dict[str, Any] | None:
        """The context of ``launch`` if it is current and was asked for by ``username``."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(L.c.username, L.c.context).where(L.c.launch_hash == digest(launch), L.c.expires_us > now_us())
            ).first()
        if row is None or row.username != username:
            return None
        return dict(orjson.loads(row.context))
