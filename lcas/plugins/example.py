"""lcas_plugin_example.mod: the shipped example plugin; allows everybody, any arguments."""

from __future__ import annotations

from lcas.plugin_api import Plugin, Request, Verdict


class AlwaysAllow(Plugin):
    name = "plugin_example"

    def authorize(self, request: Request) -> Verdict:
        return Verdict.allow("example plugin allows everybody")
