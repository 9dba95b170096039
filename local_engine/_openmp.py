"""How idle OpenMP workers wait: imported by the package before anything loads torch."""

import os

# How idle OpenMP workers wait between parallel regions (each matmul or attention call): spinning
# forever makes every op 10-20x slower on a CPU shared with other busy processes (measured: 7 vs
# 133 tok/s), while sleeping at once (OMP_WAIT_POLICY=PASSIVE) pays a wake-up of tens of
# microseconds on each of the ~150 regions of a decode step (batch-1 decode 40 vs 49 tok/s on an
# idle 2-core VM). A few hundred spins bridge the gaps inside a step and cost little when the
# cores are shared (35 vs 40 tok/s with the second core busy). libgomp reads this when torch
# loads, so it only takes effect when this package is imported before torch; an
# OMP_WAIT_POLICY or GOMP_SPINCOUNT of your own wins.
DEFAULT_GOMP_SPINCOUNT = "300"
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = DEFAULT_GOMP_SPINCOUNT
