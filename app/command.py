"""`gen-nvs app` (or `python -m app`): the Gradio app (regression and sampling) on a
local web server.

Loads the model once (the embedded default, or `--checkpoint`), writes the example scenes
and serves the page offline until interrupted. The command lives with the app, so that
the `gen_nvs` library does not depend on it; `gen_nvs.cli` finds it by module name.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile

from gen_nvs.cli import CommandError
from gen_nvs.options import add_model_arguments, resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise CommandError(f"--port must be in 1..65535, got {args.port}")
    device = resolve_device(args.device)
    # Imported here: gradio is slow to import and only this command needs it.
    from app.logic import Engine
    from app.ui import launch
    from gen_nvs.pipeline import NVSPipeline

    pipe = NVSPipeline.from_pretrained(args.checkpoint, device)
    # A terminated server (as by a test or a service manager) still removes its files.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="gen-nvs-app-") as workdir:
        where = args.checkpoint or "the embedded default model"
        engine = Engine(pipe, workdir, image_hw=tuple(args.size), model_name=where)
        sampling = "regression and sampling" if engine.can_sample else "regression only"
        print(f"gen-nvs app: {where} on {device} ({sampling}), http://{args.host}:{args.port}")
        launch(engine, host=args.host, port=args.port)
    return 0
