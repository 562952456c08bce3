"""``palaver serve``: load and check the settings, then run uvicorn."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import uvicorn

from palaver.config import ConfigError, Settings, load_settings
from palaver.observability.logs import logging_config
from palaver.server import uvicorn_options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palaver", description=__doc__)
    parser.add_argument("--version", action="version", version=f"palaver {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the OpenAI-compatible server")
    serve.add_argument("--host", help="address to bind (env HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (env PORT, default 3001)")
    serve.add_argument("--config", help="TOML config file (env PALAVER_CONFIG)")
    serve.add_argument("--workers", type=int, help="number of worker processes (default 1)")
    serve.add_argument("--reload", action="store_true", help="restart on code changes (dev)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    check = commands.add_parser("healthcheck", help="exit 0 if the local server answers /health")
    check.add_argument("--config", help="TOML config file (env PALAVER_CONFIG)")
    return parser


def _version() -> str:
    try:
        return metadata.version("palaver")
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        from palaver import __version__

        return __version__


def healthcheck(args: argparse.Namespace) -> int:
    """For container HEALTHCHECKs: GET /health on the configured port."""
    try:
        server = load_settings(args.config, os.environ).server
    except ConfigError as exc:
        print(f"palaver: configuration error: {exc}", file=sys.stderr)
        return 2
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    url = f"http://{host}:{server.port}/health"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"palaver: {url}: {exc}", file=sys.stderr)
        return 1


def app_from_env() -> Any:
    """Factory for worker and reload processes: settings come from the environment."""
    from palaver.app import create_app

    level = os.environ.get("PALAVER_LOG_LEVEL", "info")
    settings = load_settings()
    logging.config.dictConfig(logging_config(settings.server.log_format, level))
    return create_app(settings)


def serve(args: argparse.Namespace) -> int:
    flags = {"server.host": args.host, "server.port": args.port, "server.workers": args.workers}
    try:
        settings: Settings = load_settings(args.config, os.environ, flags)
    except ConfigError as exc:
        print(f"palaver: configuration error: {exc}", file=sys.stderr)
        return 2
    log_config = logging_config(settings.server.log_format, args.log_level)
    logging.config.dictConfig(log_config)
    server = settings.server
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "access_log": False,  # palaver writes its own (server.access_log), with its fields
        "log_config": log_config,
        "log_level": args.log_level,
        **uvicorn_options(server),
    }
    if server.workers > 1:  # one /metrics for all: the workers share a samples directory
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(
            prefix="palaver-metrics-"
        )
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        from palaver.observability.metrics import prepare_directory

        prepare_directory(directory)
    if args.reload or server.workers > 1:
        # Child processes rebuild the settings from the environment; flags travel through it.
        if args.config:
            os.environ["PALAVER_CONFIG"] = os.path.abspath(args.config)
        os.environ["HOST"] = server.host
        os.environ["PORT"] = str(server.port)
        os.environ["PALAVER_LOG_LEVEL"] = args.log_level
        factory_options: dict[str, Any] = {"factory": True}
        if args.reload:
            src = os.path.dirname(os.path.abspath(__file__))
            factory_options.update(reload=True, reload_dirs=[src])
        else:
            factory_options["workers"] = server.workers
        uvicorn.run("palaver.cli:app_from_env", **options, **factory_options)
        return 0
    from palaver.app import create_app

    uvicorn.run(create_app(settings), **options)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    if args.command == "healthcheck":
        return healthcheck(args)
    return 2  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":
    sys.exit(main())
