"""`python -m mrc …`: the `mrc` command, so `torchrun --nproc-per-node N -m mrc train spec.mrs`
starts N ranks of it (torchrun's `-m` runs `python -m mrc`)."""

import sys

from mrc.cli import main

if __name__ == "__main__":
    sys.exit(main())
