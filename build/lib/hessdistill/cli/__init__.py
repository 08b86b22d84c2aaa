"""Command-line entry points (thin: compose config, build objects, run)."""
