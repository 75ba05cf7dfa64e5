"""Running the app with uvicorn: in the foreground (`text2brain serve`) or in a thread.

The listening socket is opened first, so a port in use fails at once, before the models load,
and `running` can take a free port (0) and say which it got.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

#: Connections that may wait to be accepted (uvicorn's default).
BACKLOG = 2048
#: How long `running` waits for the server to start.
START_TIMEOUT_S = 30.0


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` (0: a free port), ready for uvicorn."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as err:
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror or err})") from err
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)  # connections wait in the queue until uvicorn accepts them
    except OSError as err:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({err.strerror or err})") from err
    return sock


def url_of(sock: socket.socket) -> str:
    """The http:// address of a listening socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def server(app: Any, log_level: str = "warning", access_log: bool = False) -> uvicorn.Server:
    """A uvicorn server for `app` (run it on a socket from `listen`)."""
    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="off")
    return uvicorn.Server(config)


@contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` from a thread inside the block; yields its base URL (no trailing /)."""
    sock = listen(host, port)
    running_server = server(app)
    thread = threading.Thread(
        target=running_server.run, kwargs={"sockets": [sock]}, name="text2brain-serve", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not running_server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the web server did not start")
            time.sleep(0.02)
        yield url_of(sock)
    finally:
        running_server.should_exit = True
        thread.join(10)
        sock.close()
