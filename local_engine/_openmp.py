"""How idle OpenMP workers wait: imported by the package before anything loads torch."""

import os

# OpenMP here only runs torch's own ops (prefill matmuls, elementwise ops); the decode kernels
# share work over their own pool (local_engine/kernels/cpu/pool.h). Spinning OpenMP workers make
# every torch op 10-20x slower on a CPU shared with other busy processes (measured: 7 vs 133
# tok/s), so idle workers sleep at once. libgomp reads this when torch loads, so it only takes
# effect when this package is imported before torch; an OMP_WAIT_POLICY or GOMP_SPINCOUNT of
# your own wins.
OMP_WAIT_POLICY = "PASSIVE"
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
