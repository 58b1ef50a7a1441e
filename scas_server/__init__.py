"""scas_server."""
