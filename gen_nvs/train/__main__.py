"""`python -m gen_nvs.train` and `accelerate launch -m gen_nvs.train`."""

import sys

from gen_nvs.train.loop import main

if __name__ == "__main__":
    sys.exit(main())
