"""``pcamlab serve``: the web page and the HTTP API of a trained model, under uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

TOKEN_VARIABLE = "PCAMLAB_SERVE_TOKEN"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="serve a model: web page + JSON API (predict, Grad-CAM, slide heatmap jobs, model card)",
        description="Serve MODEL (a checkpoint .safetensors, or .onnx / .pt from pcamlab export) on a web page "
        "and a versioned JSON API (/v1/model, /v1/predict, /v1/explain, and /v1/slides heatmap jobs on the slides "
        "of --slide-root; OpenAPI at /docs). Binds to "
        f"127.0.0.1 unless --host says otherwise; --token (or ${TOKEN_VARIABLE}) requires "
        "'Authorization: Bearer TOKEN' on every API call.",
    )
    parser.add_argument("checkpoint", metavar="MODEL", help="checkpoint .safetensors, or exported .onnx / .pt")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--token", default=None,
                        help=f"bearer token required on API calls (default: ${TOKEN_VARIABLE}, else none)")
    parser.add_argument("--workers", type=int, default=2, help="inference jobs running at once (default 2)")
    parser.add_argument("--max-queue", type=int, default=32, help="jobs waiting before 503 (default 32)")
    parser.add_argument("--max-images", type=int, default=512, help="most patches per request (default 512)")
    parser.add_argument("--max-request-mb", type=float, default=64.0, help="largest request body in MiB (default 64)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per process (default: CPU cores // workers, at least 1)")
    parser.add_argument("--slide-root", metavar="DIR", help="folder whose slides the slide heatmap jobs may read")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (torch checkpoints only)")
    parser.set_defaults(func=run)


def loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1 or localhost)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, token: str | None, empty_variable: bool = False) -> str | None:
    """The warning printed when the server is reachable from other machines without a token, else None.

    ``empty_variable``: the token variable is set but empty (which counts as unset): the warning says so,
    on any host (someone who set it meant a token).
    """
    if token:
        return None
    if loopback(host):  # only this machine can reach it: an unset token is the expected default, an empty one is not
        return (f"pcamlab: warning: {TOKEN_VARIABLE} is set but empty, which counts as unset: serving on {host} "
                "without a token; put a token in it, pass --token, or unset it") if empty_variable else None
    fix = (f"{TOKEN_VARIABLE} is set but empty, which counts as unset: put a token in it or pass --token"
           if empty_variable else f"pass --token or set {TOKEN_VARIABLE}")
    return f"pcamlab: warning: serving on {host} without a token: anyone who can reach this machine can use the API; {fix}"


def token_from(flag: str | None, environment: dict[str, str]) -> tuple[str | None, bool]:
    """The token (``--token``, else ``$PCAMLAB_SERVE_TOKEN``; an empty variable counts as unset), stripped.

    Returns:
        ``(token or None, whether the variable is set but empty)``.

    Raises:
        ConfigError: the token is blank or holds control or non-ASCII characters (named by where it came from).
    """
    from pcamlab.serve import check_token

    if flag is not None:
        return check_token(flag, "--token"), False
    value = environment.get(TOKEN_VARIABLE)
    if value is None or value == "":
        return None, value == ""
    return check_token(value, f"${TOKEN_VARIABLE}"), False


def check_port(host: str, port: int) -> None:
    """Bind ``host:port`` once and let it go, so a busy port is one line before the model loads.

    Raises:
        ConfigError: the address is in use, not an address of this machine, or needs privileges.
    """
    import errno
    import socket

    from pcamlab.errors import ConfigError

    try:
        family, kind, protocol, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (OSError, UnicodeError) as error:
        raise ConfigError(f"--host {host!r} is not a host name or address this machine knows ({error})") from None
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as error:
            why = {errno.EADDRINUSE: "is already in use (another server?)",
                   errno.EADDRNOTAVAIL: "is not an address of this machine",
                   errno.EACCES: "needs privileges (ports below 1024)"}.get(error.errno, f"cannot be bound ({error})")
            raise ConfigError(f"--port {port} on --host {host} {why}; choose another --port or stop what uses it") from None


def run(args: argparse.Namespace) -> int:
    import importlib.util

    from pcamlab import stopping
    from pcamlab.errors import ConfigError, RunError

    missing = [name for name in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(name) is None]
    if missing:
        raise RunError(
            f"pcamlab serve needs {', '.join(missing)}, which is not installed; install it with: "
            "pip install 'pcamlab[serve]'"
        )
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535; got {args.port}")
    if args.max_request_mb <= 0:
        raise ConfigError(f"--max-request-mb must be > 0; got {args.max_request_mb}")
    token, empty_variable = token_from(args.token, dict(os.environ))
    check_port(args.host, args.port)
    import torch
    import uvicorn

    from pcamlab.serve import ServedModel, ServeSettings, create_app

    settings = ServeSettings(
        token=token, max_request_bytes=int(args.max_request_mb * 2**20), max_images=args.max_images,
        workers=args.workers, max_queue=args.max_queue,
        slide_root=Path(args.slide_root).expanduser() if args.slide_root else None,
    ).validate()
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // settings.workers))
    model = ServedModel.load(args.checkpoint, device=args.device)
    app = create_app(model, settings)
    warning = exposure_warning(args.host, token, empty_variable)
    if warning:
        print(warning, file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"serving {model.path.name} ({model.card()['architecture']['name']}, threshold {model.threshold:.3f}) at "
        f"http://{shown}:{args.port}/  (API docs /docs{', token required' if token else ''}; Ctrl+C stops)",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    # uvicorn answers SIGINT/SIGTERM by shutting down, passes the signal on to pcamlab's handler (which records
    # it) and then swallows the KeyboardInterrupt: raise it again here, so the exit status is 130 or 143
    stopping.check()
    return 0
