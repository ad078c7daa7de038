"""``fraudops serve``: run the endpoint for the deployed (or a given approved) model.

Foreground, on a fixed port (SageMaker's 8080 by default), until Ctrl-C. The
deployer's detached endpoint is unaffected; this is for trying requests by
hand or running the endpoint under a process supervisor.
"""

from __future__ import annotations

import argparse
import errno

from pipelines.cli.commands._common import UserError, add_workdir_argument, open_workspace

DEFAULT_PORT = 8080


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the model endpoint (/ping, /invocations) in the foreground",
        description="Serve the deployed model (or --version V, which must be approved) "
        "with the SageMaker inference handler on http://HOST:PORT.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="default 8080")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback)")
    parser.add_argument("--version", default=None, help="model version (default: deployed)")
    parser.add_argument("--group", default=None, help="model package group")
    add_workdir_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.serving.deploy.artifacts import ArtifactError, materialize
    from pipelines.serving.deploy.selection import SelectionError, select_package
    from pipelines.serving.endpoint.server import configure_logging, serve

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    ws = open_workspace(args)
    try:
        bundle = materialize(select_package(ws, args.version, args.group), ws)
    except (SelectionError, ArtifactError) as exc:
        raise UserError(str(exc)) from exc
    log_file = ws.logs / "serve.log"
    configure_logging(log_file)

    def announce(server) -> None:
        print(
            f"serving model version {bundle.version} on {server.url} (log: {log_file}); "
            "Ctrl-C stops",
            flush=True,
        )

    try:
        serve(
            bundle.model_dir,
            bundle.code_dir,
            bundle.program,
            host=args.host,
            port=args.port,
            on_ready=announce,
        )
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {args.port} is in use: pass --port N") from exc
        raise
    except KeyboardInterrupt:
        print("stopped")
    return 0
