"""`python -m app [options]`: the same as `gen-nvs app [options]`."""

import sys

from gen_nvs.cli import main

sys.exit(main(["app", *sys.argv[1:]]))
