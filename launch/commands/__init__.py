"""One module per CLI command: `NAME`, `HELP`, `add_arguments(parser)`, `run(args) -> int`.

Modules import only argparse at the top; the work they do imports torch, Ray, DeepSpeed or
MLflow inside `run`, so `vitpipe --help` stays instant.
"""
