"""Data path: readers → Structure records → HDF5 store → datamodule (one way)."""
