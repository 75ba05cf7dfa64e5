"""`text2brain serve`: the options, the check for the `web` extra, loading, serving."""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from importlib.util import find_spec

from text2brain.errors import add_debug_option
from text2brain.releases import DEFAULT_MODEL

#: The `web` extra's modules (import name -> what pip installs).
WEB_MODULES = {"starlette": "starlette", "uvicorn": "uvicorn", "multipart": "python-multipart"}
INSTALL = 'pip install "text2brain[web]"'


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="text2brain serve",
        description="Serve a page (query box, brain viewer, glass brain, downloads, related "
        "articles) and a JSON/HTTP API over text2brain models, on this machine. Needs the web "
        f"extra: {INSTALL}.",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME|PATH|NAME=PATH",
        help="a model to serve (repeat for several; the first is the default): a checkpoint "
        "or export folder, named by its stem unless given as NAME=PATH, or "
        f"{DEFAULT_MODEL} (the released model, also the default without --model)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only)",
    )
    parser.add_argument(
        "--port", type=port_number, default=8000, help="port (default: %(default)s; 0: a free one)"
    )
    parser.add_argument(
        "--device", default=None, help="where the models run (default: cuda or cpu)"
    )
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default: %(default)s; 0: torch's default, one per core). One "
        "query runs 20 ms on one thread of a 2-core CPU; more threads gain little on one query "
        "and slow down many times over when other programs use the cores",
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=16.0, help="largest NIfTI upload accepted"
    )
    parser.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    add_debug_option(parser)
    return parser


def port_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535, got {text!r}")
    return int(text)


def missing_web_modules() -> list[str]:
    """The `web` extra's packages that are not installed."""
    return [package for module, package in WEB_MODULES.items() if find_spec(module) is None]


def serve(argv: list[str]) -> None:
    """Load the models, then serve the page and the API until interrupted."""
    args = build_parser().parse_args(argv)
    missing = missing_web_modules()
    if missing:
        print(
            f"text2brain serve: error: the web server needs the web extra ({', '.join(missing)} "
            f"missing): {INSTALL}",
            file=sys.stderr,
        )
        sys.exit(2)
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.threads < 0:
        raise ValueError(f"--threads must be 0 (torch's default) or more, got {args.threads}")

    from text2brain.serve.app import create_app
    from text2brain.serve.models import load_models, parse_specs
    from text2brain.serve.runner import listen, server, url_of

    specs = parse_specs(args.model)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sock = listen(args.host, args.port)  # a port in use fails now, not after the loading
    try:
        start = time.perf_counter()
        models = load_models(specs, args.device, args.precision)
        app = create_app(models, max_upload_bytes=int(args.max_upload_mb * 2**20))
        loaded = ", ".join(f"{name} ({predictor!r})" for name, predictor in models.items())
        import torch

        elapsed = time.perf_counter() - start
        threads = torch.get_num_threads()
        print(
            f"loaded in {elapsed:.1f} s (torch on {threads} thread{'s' * (threads != 1)}): "
            f"{loaded}",
            flush=True,
        )
        if not is_loopback(args.host):
            print(
                f"warning: listening on {args.host}, reachable from other machines; the server "
                "has no authentication",
                file=sys.stderr,
            )
        print(f"serving on {url_of(sock)}/ (Ctrl-C stops)", flush=True)
        server(app, log_level=args.log_level, access_log=args.log_level in ("info", "debug")).run(
            sockets=[sock]
        )
    finally:
        sock.close()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
