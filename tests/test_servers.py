"""The test servers themselves: a port found free but taken before the server binds it is not a failed test."""

from __future__ import annotations

import socket

import requests

from tests.servers import MlflowServer


def test_an_mlflow_server_whose_port_was_taken_starts_on_another(tmp_path):
    server = MlflowServer(tmp_path / "mlflow")
    with socket.socket() as squatter:  # another process took the port after it was found free
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        taken = server.port
        try:
            server.start()
            assert server.port != taken and server.url.endswith(f":{server.port}")
            assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
        finally:
            server.stop()
    assert "already in use" in server.log.read_text().lower()
