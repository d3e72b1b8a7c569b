"""`gen-nvs app`: the Gradio app (regression and sampling) on a local web server.

Loads the model once (the embedded default, or `--checkpoint`), writes the example scenes
and serves the page offline until interrupted. The page itself lives in `app/`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile

from gen_nvs.cli import CommandError
from gen_nvs.inputs import resolve_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="model export (directory or hf://org/repo[/subdir]); default: the embedded model",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...",
    )
    parser.add_argument(
        "--size",
        nargs=2,
        type=int,
        default=[64, 64],
        metavar=("H", "W"),
        help="input and render size, multiples of the model's patch size (default 64 64)",
    )


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise CommandError(f"--port must be in 1..65535, got {args.port}")
    device = resolve_device(args.device)
    # Imported here: gradio is slow to import and only this command needs it.
    from app.logic import Engine
    from app.ui import launch
    from gen_nvs.models.nvs import load_model_or_default

    model = load_model_or_default(args.checkpoint, device)
    # A terminated server (as by a test or a service manager) still removes its files.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="gen-nvs-app-") as workdir:
        engine = Engine(model, workdir, device=device, image_hw=tuple(args.size))
        where = args.checkpoint or "the embedded default model"
        sampling = "regression and sampling" if engine.can_sample else "regression only"
        print(f"gen-nvs app: {where} on {device} ({sampling}), http://{args.host}:{args.port}")
        launch(engine, host=args.host, port=args.port)
    return 0
