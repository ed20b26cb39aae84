"""Shards -> batches: a deterministic, resumable, corruption-tolerant training and eval loader.

Modules, one job each: `read_plan` (who reads which sample in which order; pure),
`epoch_stream` (what an epoch streams: shard order, a mix's draw, excluded samples; pure),
`train_sources` (`data.train_shards`: one shard set or a mix, and its classes), `tar_reader`
(stream samples out of one tar, no-throw, webdataset's grouping rules), `shard_files` (links,
sizes and sha256 of shard files), `transforms` (decode + seeded augmentation), `dataset` (the
per-worker IterableDataset), `shard_loader` (the rank's loader), `loader_state` (its state).
"""
