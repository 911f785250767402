"""Datasets to WebDataset tar shards, and shards to uint8 batches on every rank.

    source                       what a reader hands the writer: samples per split, classes, groups
    cub, nabirds, folder, demo   read a dataset's own layout (or generate one) as a `SourceDataset`
    val_split                    hold out a class-stratified validation part of train
    writer                       `SourceDataset` -> `<split>-NNNNNN.tar` + `manifest.json`
    outdir                       the directory a writer owns: its lock, and which files it may replace
    manifest                     load, check and verify what the writer wrote
    tario                        the tar format: deterministic writing, sample reading by index
    plan                         which shard ranges each (rank, worker) reads in an epoch
    decode                       opening image bytes: the pixel limit, and what unusable bytes are
    transforms                   decoding and the published augmentation on uint8 tensors
    stream                       training and evaluation loaders over the shards
    workers                      how loader workers start (forkserver: no fork beside running threads)
    commands                     `herbs shard ...`

Nothing here knows about the model or Accelerate: a loader is given its rank and world size.
"""
