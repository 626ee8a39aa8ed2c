"""The ``fhir-server`` command: ``serve``, ``db upgrade``, ``load``.

Every option also reads ``FHIR_SERVER_<OPTION>`` from the environment (ARCHITECTURE.md).
``serve`` patches the standard library for gevent before anything else is imported, because
sockets, threads and the database drivers must all cooperate with gevent's event loop.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    if "serve" in sys.argv[1:]:  # also `fhir-server --log-level X serve`
        from gevent import monkey

        monkey.patch_all()
        # psycopg picks gevent's poll() per wait once select is patched; select() is half the
        # cost per database round trip (ingest profile, docs/performance.md).
        os.environ.setdefault("PSYCOPG_WAIT_FUNC", "wait_select")
    from fhir_server.commands import cli

    cli(auto_envvar_prefix="FHIR_SERVER")


if __name__ == "__main__":
    main()
