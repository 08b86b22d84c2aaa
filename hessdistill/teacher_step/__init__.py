"""The teacher step: label a store's structures with teacher energies, forces and Hessians (``run``), in batches
sized on the real work (``batch_size``), optionally as shards merged afterwards (``shards``)."""
