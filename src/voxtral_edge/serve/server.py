"""Run the service under uvicorn: the binding rule, the limits, and SIGTERM ending streams at a frame."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
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


def bind_unix(path: str) -> socket.socket:
    """A listening unix socket at `path`, mode 0660 (its owner and group may connect). A socket file left by a
    process that died (nobody accepts on it) is replaced; a live server's, or anything not a socket, is not."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None:
        if not stat.S_ISSOCK(mode):
            raise UsageError(f"--unix {path}: exists and is not a socket; not replacing it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except ConnectionRefusedError:  # left over from a crash
                os.unlink(path)
                logging.getLogger("voxtral_edge.serve").warning("--unix %s: removed the socket left by a server that "
                                                                "is no longer running", path)
            except OSError as e:
                raise UsageError(f"--unix {path}: cannot check the socket there ({e.strerror or e})") from None
            else:
                raise UsageError(f"--unix {path}: another server is listening there; stop it first")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o117)
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise UsageError(f"--unix {path}: cannot listen there ({e.strerror or e})") from None
    finally:
        os.umask(umask)
    sock.listen(2048)
    return sock


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
        from .guards import install_lease_handler
    except ImportError as e:
        raise UsageError(f"serve needs the [serve] extra ({e.name} is missing): pip install 'voxtral-edge[serve]'") \
            from None
    install_lease_handler()  # (the main thread's to do) bundle files changed under the service are heard
    sock = bind_unix(unix) if unix is not None else None
    inode = os.lstat(unix).st_ino if sock is not None else None
    service = Service(config)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            service.stop(wait=False)  # streams end at the frame being made; uvicorn then waits for them
            super().handle_exit(sig, frame)

        def run(self, sockets=None):
            try:
                return super().run(sockets=sockets or ([sock] if sock is not None else None))
            finally:
                if sock is not None:
                    _remove_socket(unix, inode, sock)

    uv = uvicorn.Config(create_app(service), host=host, port=port, uds=unix, http="h11", lifespan="on",
                        limit_concurrency=max_connections, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                        timeout_graceful_shutdown=30, timeout_keep_alive=5, log_level=log_level,
                        server_header=False)
    server = Server(uv)
    server.service = service
    service.on_failure = lambda: setattr(server, "should_exit", True)
    return server


def _remove_socket(path: str, inode: int, sock: socket.socket) -> None:
    """Remove our socket file when the server stops (unless another server has taken the path since)."""
    sock.close()
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass


def serve(config, **options) -> None:
    """Serve until SIGTERM/SIGINT (see make_server for the options); VoxtralEdgeError if the bundle cannot
    be opened (the server then stops at once, so that a supervisor sees the failure)."""
    logging.basicConfig(level=options.get("log_level", "info").upper(), format="%(levelname)s: %(message)s")
    server = make_server(config, **options)
    server.run()
    if server.service.state == "failed":
        raise VoxtralEdgeError(f"--bundle {config.bundle}: {server.service.error}")
