"""`gen-nvs check-reference FIXTURE...`: recompute golden fixtures of the official code.

Prints the maximum absolute error per quantity and exits non-zero if any exceeds the
tolerance (1e-4).
"""

from __future__ import annotations

import argparse
import json
import math

from gen_nvs.cli import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fixtures", nargs="+", help="fixture .safetensors files")
    parser.add_argument(
        "--tolerance", type=float, default=None, help="largest error accepted, >= 0 (default 1e-4)"
    )
    parser.add_argument("--json", action="store_true", help="print the errors as JSON")


def run(args: argparse.Namespace) -> int:
    from gen_nvs.fixtures import TOLERANCE, check_fixture

    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise CommandError(f"--tolerance must be a finite number >= 0, got {tolerance}")
    results, failed = {}, []
    for path in args.fixtures:
        errors = check_fixture(path)
        results[path] = errors
        bad = {k: v for k, v in errors.items() if not v <= tolerance}
        if bad:
            failed.append(path)
        if not args.json:
            print(f"{path}: {'FAIL' if bad else 'ok'}")
            for name, err in errors.items():
                flag = "  <-- exceeds" if name in bad else ""
                print(f"  {name:28s} max abs error {err:.3e}{flag}")
    if args.json:
        print(json.dumps({"tolerance": tolerance, "errors": results, "failed": failed}, indent=2))
    if failed:
        print(f"{len(failed)} of {len(args.fixtures)} fixture(s) exceed {tolerance:g}")
        return 1
    return 0
