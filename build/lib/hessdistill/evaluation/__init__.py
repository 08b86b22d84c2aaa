"""Evaluating a trained student against its teacher: accuracy on a store split, speed, relaxation, spectra."""
