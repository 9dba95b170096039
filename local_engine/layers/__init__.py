"""Model building blocks (tensor-parallel-ready boundaries, tp_size=1 is what runs today)."""
