"""Run the service under uvicorn: the binding rule, the limits, and SIGTERM ending streams at a frame."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from ..errors import UsageError, VoxtralEdgeError



def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, unix: str | None, api_key: str | None) -> None:
    """Loopback (or a unix socket) by default; any other address only with an API key."""
    if unix is None and not is_loopback(host) and not api_key:
        raise UsageError(f"--host {host} is not a loopback address: give --api-key KEY (clients then send "
                         f"'Authorization: Bearer KEY'), or serve on 127.0.0.1")


def default_cache_dir() -> Path:
    """systemd's CacheDirectory= when set, else ~/.cache/voxtral-edge/phrases."""
    base = os.environ.get("CACHE_DIRECTORY") or os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / ("phrases" if os.environ.get("CACHE_DIRECTORY") else "voxtral-edge/phrases")


def make_server(config, *, host: str = "127.0.0.1", port: int = 8000, unix: str | None = None,
                max_connections: int = 32, log_level: str = "info"):
    """A uvicorn Server over a new Service (the bundle opens when it starts). On SIGTERM or Ctrl-C, every
    stream ends at the next frame boundary with the audio made so far, then the server exits."""
    check_binding(host, unix, config.api_key)
    try:
        import uvicorn

        from .app import MAX_HEADER_BYTES, Service, create_app
    except ImportError as e:
        raise UsageError(f"serve needs the [serve] extra ({e.name} is missing): pip install 'voxtral-edge[serve]'") \
            from None
    service = Service(config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            service.stop(wait=False)  # streams end at the frame being made; uvicorn then waits for them
            super().handle_exit(sig, frame)

    uv = uvicorn.Config(create_app(service), host=host, port=port, uds=unix, http="h11", lifespan="on",
                        limit_concurrency=max_connections, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                        timeout_graceful_shutdown=30, timeout_keep_alive=5, log_level=log_level,
                        server_header=False)
    server = Server(uv)
    server.service = service
    service.on_failure = lambda: setattr(server, "should_exit", True)
    return server


def serve(config, **options) -> None:
    """Serve until SIGTERM/SIGINT (see make_server for the options); VoxtralEdgeError if the bundle cannot
    be opened (the server then stops at once, so that a supervisor sees the failure)."""
    logging.basicConfig(level=options.get("log_level", "info").upper(), format="%(levelname)s: %(message)s")
    server = make_server(config, **options)
    server.run()
    if server.service.state == "failed":
        raise VoxtralEdgeError(f"--bundle {config.bundle}: {server.service.error}")
