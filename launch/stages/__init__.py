"""Stage drivers: one module per stage (shard, training, finetune, evaluate, pipeline).

A stage owns its run dir, its MLflow run and its summary.json; the CLI commands call them.
"""
