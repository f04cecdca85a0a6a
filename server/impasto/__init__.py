"""Impasto: neural style transfer for GIMP, served from your own GPU."""

import os

__version__ = "0.1.0"

# PyTorch's CPU threads (GNU OpenMP) wait for each other after each parallel operation by spinning, by
# default for 300,000 rounds. On a machine busy with other work the spinning thread holds a core that the
# thread it waits for needs: the default CPU job took 1.5–3.5 times as long as with a short spin, which
# is as fast on a quiet machine (docs/benchmarks.md, "OpenMP's wait on a busy machine"). Set here, before
# PyTorch loads (libgomp reads it once); a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
OPENMP_SPIN_COUNT = "10000"
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)
