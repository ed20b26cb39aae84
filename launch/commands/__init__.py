"""One module per CLI command: `NAME`, `HELP`, `add_arguments(parser)`, `run(args) -> int`.

Commands import what they use at the top; Ray, DeepSpeed and MLflow are imported only where they
are used, so `vitpipe --help` never starts them.
"""
