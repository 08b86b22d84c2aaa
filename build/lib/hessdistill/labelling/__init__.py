"""Making reference data: conformer sampling by teacher MD and DFT labelling (resumable)."""
