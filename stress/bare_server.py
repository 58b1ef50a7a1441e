"""The yardstick: a bare flask app on gunicorn with exactly the SCAS server's TLS and workers.

``python stress/bare_server.py --config WORK/scas.yaml --listen 127.0.0.1:PORT``

It takes its gunicorn settings from the same YAML through the same function
as ``scas-server`` (certificate, CA directory with CRLs, mutual TLS, worker
class, workers, threads, keep-alive), reads the POSTed body and answers with a
canned Permit for the request's ID. The difference between the two endpoints
in one run is therefore the cost of deciding, nothing else.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import replace
from typing import Any

from flask import Flask, Response, request
from gunicorn.app.base import BaseApplication

from client import xacml
from client.xacml import Decision
from scas_server.config import load_config
from scas_server.gunicorn_conf import gunicorn_settings

_ID = re.compile(rb'\sID="([^"]{1,128})"')


def create_app(sample_request: bytes) -> Flask:
    """A flask app answering every POST with a Permit shaped like the real one."""
    sample = xacml.parse_request(sample_request)
    template = xacml.build_response(
        sample, Decision.permit(uid=40001, gid=4000, sgids=(4001,), username="stpatl0001"),
        issuer="scas.stress",
    )
    old_id = sample.request_id.encode()
    app = Flask("bare")

    @app.post("/")
    def answer() -> Response:
        body = request.get_data()
        found = _ID.search(body, 0, 4096)
        reply = template.replace(old_id, found.group(1) if found else b"")
        return Response(reply, content_type="text/xml; charset=utf-8")

    return app


class BareApplication(BaseApplication):
    def __init__(self, settings: dict[str, Any], app: Flask) -> None:
        self.settings, self.app = settings, app
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the scas-server YAML to copy")
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--sample", required=True, help="a query file to shape the reply on")
    args = parser.parse_args()
    cfg = replace(load_config(args.config), listen=args.listen)
    settings = gunicorn_settings(cfg)
    settings.pop("child_exit", None)
    settings["proc_name"] = "scas-bare"
    with open(args.sample, "rb") as fh:
        app = create_app(fh.read())
    BareApplication(settings, app).run()


if __name__ == "__main__":
    main()
