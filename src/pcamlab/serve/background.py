"""Run the server in a background thread of this process, on 127.0.0.1 and a free port.

For tests, the screenshot script and notebooks: the server starts before the ``with`` body and stops
(connections closed, worker pool shut down) when it ends, also on error.

Example:
    >>> with BackgroundServer(create_app(ServedModel.load("best.safetensors"))) as server:
    ...     httpx.get(server.url + "health").json()["status"]
    'ok'
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from pcamlab.errors import RunError

__all__ = ["BackgroundServer", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class BackgroundServer:
    """uvicorn serving ``app`` in a daemon thread.

    Args:
        app: the ASGI app (:func:`pcamlab.serve.create_app`).
        host: address to bind (default loopback only).
        port: TCP port; 0 picks a free one.
        start_timeout: seconds to wait for the server to accept connections.

    Attributes:
        url: ``http://HOST:PORT/`` once started.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0):
        import uvicorn

        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}/"
        self.start_timeout = start_timeout
        config = uvicorn.Config(app, host=host, port=self.port, log_level="warning", access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="pcamlab-serve-background", daemon=True)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RunError(f"the server did not start on {self.url} within {self.start_timeout:.0f} s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
