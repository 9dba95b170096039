"""Model building blocks, with tensor-parallel boundaries (``tp_rank`` / ``tp_size``; see ``linear``)."""
