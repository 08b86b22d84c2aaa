"""Readers, one per format, each yielding validated ``Structure`` records in eV, Å, eV/Å."""
