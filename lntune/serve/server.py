"""Running the app on uvicorn: in the foreground for `lntune serve`, in a thread for tests and the benchmark.

Shutdown is graceful: on Ctrl-C / SIGTERM (or `should_exit`) uvicorn stops accepting connections and waits for the
requests in flight, streaming ones included, to finish; then the app's lifespan stops the decoder thread after the
queued requests are done.
"""

from __future__ import annotations

import contextlib
import threading
import time

from lntune.errors import LntuneError
from lntune.serve.app import create_app
from lntune.serve.service import ChatService


def _config(service: ChatService, host: str, port: int, log_level: str = "warning"):
    import uvicorn

    return uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level, lifespan="on",
                          timeout_graceful_shutdown=None, server_header=False)


def serve_forever(service: ChatService, say=print) -> None:
    import uvicorn

    settings = service.settings
    server = uvicorn.Server(_config(service, settings.host, settings.port, "info"))
    say(f"lntune serve: {service.adapters.base.name} with {len(service.adapters.adapters)} adapters; "
        f"chat page and API at http://{settings.host}:{settings.port}/ (Ctrl-C to stop)")
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn shuts down gracefully on Ctrl-C, then raises the signal again for the caller; stopping is the
        # normal way to end a server, so it ends here with status 0.
        if not server.started:
            raise
    except SystemExit:
        if server.started:
            raise
        # uvicorn logs why it could not bind (address in use, no permission) and exits; say it in lntune's one line
        raise LntuneError(f"could not listen on {settings.host}:{settings.port} (in use, or not an address of this "
                          "machine?); choose another --port or --host") from None
    say("lntune serve: stopped (every request in flight was answered)")


@contextlib.contextmanager
def serving_in_thread(service: ChatService, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 60.0):
    """Yields (base URL, uvicorn server) with the app listening on `host` (port 0: a free one); stops it, gracefully,
    on exit and waits for the thread."""
    import uvicorn

    server = uvicorn.Server(_config(service, host, port))
    thread = threading.Thread(target=server.run, name="lntune-serve-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(10)
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}", server
    finally:
        server.should_exit = True
        thread.join(120)
