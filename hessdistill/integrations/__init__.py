"""Integrations with the tools that use a trained student: the ASE calculator, prediction files, deployment export."""
