"""The `gen-nvs` command line: one console command with sub-commands.

Each sub-command lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`; modules are imported only when their command runs, so that
`gen-nvs --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gen_nvs.threads import configure_threads, set_passive_wait

set_passive_wait()  # before anything imports torch: idle threads sleep (gen_nvs.threads)

# name -> (module, one-line help). The app's command lives in the `app` package, which
# builds on this library rather than the other way round.
COMMANDS: dict[str, tuple[str, str]] = {
    "app": ("app.command", "start the Gradio app (regression and sampling)"),
    "render": (
        "gen_nvs.commands.render",
        "render novel views (or a trajectory video) and a fused point cloud from images",
    ),
    "sample": (
        "gen_nvs.commands.sample",
        "draw diffusion samples of novel views, completing what the sources did not see",
    ),
    "eval": ("gen_nvs.commands.eval", "evaluate a model: PSNR/SSIM/LPIPS, seen vs unseen"),
    "make-scenes": (
        "gen_nvs.commands.make_scenes",
        "render procedural RGB-D scenes to disk (RealEstate10K layout)",
    ),
    "check-reference": (
        "gen_nvs.commands.check_reference",
        "recompute golden fixtures of the official implementation (max error per quantity)",
    ),
    "bench": ("gen_nvs.commands.bench", "benchmarks that print their figures as JSON"),
}


class CommandError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gen-nvs", description="Generative novel view synthesis toolkit."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module)
        if name != "bench":  # each benchmark has its own --threads (default: torch's)
            cmd.add_argument(
                "--threads",
                type=int,
                default=None,
                help="CPU threads (default: OMP_NUM_THREADS, else the cores not busy with "
                "other processes; see gen_nvs.threads)",
            )
        # Arguments are attached lazily in main(), once the command is known.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    # First pass: find the command, then let its module declare its arguments.
    command = next((a for a in argv if a in COMMANDS), None)
    if command is not None:
        module = importlib.import_module(COMMANDS[command][0])
        sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        module.add_arguments(sub_action.choices[command])
    args = parser.parse_args(argv)
    module = importlib.import_module(args._module)
    try:
        if args.command != "bench":
            configure_threads(args.threads)
        return int(module.run(args) or 0)
    except (CommandError, ValueError, FileNotFoundError) as err:
        print(f"gen-nvs {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gen-nvs {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
