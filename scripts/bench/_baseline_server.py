"""The limit of ``scripts/bench/read``: a minimal Flask app on the server's gevent setup.

It answers ``GET <path>`` with the bytes (and ETag/Last-Modified/Content-Type) the FHIR server
returned for the same URL, from memory, through the same stack as a server worker: gevent
monkey-patching, ``gevent.pywsgi.WSGIServer`` with ``fhir_server.server.NoDelayHandler`` on a
socket from ``fhir_server.server.listen``, no access log. Whatever the FHIR server adds on top
of this (routing, database, serialisation) is what the ratio measures.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import pathlib  # noqa: E402

from flask import Flask, Response  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from fhir_server.server import NoDelayHandler, listen  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", required=True, help="file with the response body")
    parser.add_argument("--content-type", required=True)
    parser.add_argument("--path", required=True, help="the URL path to answer, e.g. /fhir/Patient/123")
    parser.add_argument("--header", action="append", default=[], help="'Name: value' response header")
    args = parser.parse_args()
    body = pathlib.Path(args.body).read_bytes()
    headers = dict(h.split(": ", 1) for h in args.header)
    app = Flask("baseline")

    def resource(path: str) -> Response:
        if "/fhir/" + path != args.path:
            return Response(b"not found\n", status=404)
        return Response(body, status=200, content_type=args.content_type, headers=headers)

    app.add_url_rule("/fhir/<path:path>", "fhir", resource, methods=["GET"])
    server = WSGIServer(
        listen("127.0.0.1", args.port),
        app,
        handler_class=NoDelayHandler,
        log=None,
        error_log=logging.getLogger("baseline.wsgi"),
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
