"""Integrations with the tools that use a trained student: the ASE calculator, prediction files, deployment
(metatomic model files) and the torch-sim adapter."""
