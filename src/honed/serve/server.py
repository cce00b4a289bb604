"""Run the app under uvicorn: localhost by default, graceful shutdown on SIGTERM / Ctrl-C.

uvicorn stops accepting connections on SIGTERM, lets every in-flight request (streams included)
finish for up to `graceful_shutdown_s`, then runs the app's lifespan shutdown and exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading

from honed.serve.settings import ServeSettings

log = logging.getLogger("honed.serve")

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def exposure_warning(settings: ServeSettings) -> str | None:
    """What to say when the server is reachable from other machines.

    >>> exposure_warning(ServeSettings(host="0.0.0.0")).startswith("WARNING")
    True
    >>> exposure_warning(ServeSettings()) is None
    True
    """
    if settings.host in LOOPBACK:
        return None
    if settings.api_key:
        return f"listening on {settings.host}: reachable from other machines (API key required)"
    return (f"WARNING: listening on {settings.host} WITHOUT an API key: anyone who can reach this machine can use "
            "the model. Set --api-key (or HONED_API_KEY), or bind --host 127.0.0.1.")


def run_server(app, settings: ServeSettings) -> None:
    """Serve `app` until SIGTERM / SIGINT; in-flight requests finish first."""
    import uvicorn

    warning = exposure_warning(settings)
    if warning:
        log.warning(warning)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", access_log=False,
                            timeout_graceful_shutdown=settings.graceful_shutdown_s)
    server = uvicorn.Server(config)
    if threading.current_thread() is not threading.main_thread():
        server.run()
        return
    # uvicorn handles SIGTERM/SIGINT itself (graceful shutdown), then raises the signal again to the
    # handler it found; a handler that ignores it makes a completed graceful stop exit 0.
    previous = {sig: signal.signal(sig, _already_handled) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _already_handled(signum, frame) -> None:
    log.info("stopped by signal %d after finishing in-flight requests", signum)
