"""Data: sources -> WebDataset shards + manifest (writing), and shards -> batches (loading)."""
