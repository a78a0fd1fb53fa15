"""Readers of a finished output: features, task datasets, search, and the output's own checks.

`features` (`load_videos`, `load_clips`: Parquet and HDF5 parts as tables or arrays), `task_dataset`
(`TaskDataset`, windows of clip features for training), `search` (`VideoIndex`, cosine top-k), `neighbours`
(the nearest videos of many queries in one scan), `verify` and `status` (what `vidfeat verify` / `status`
say of an output).

May import: `store` (the ledger says which parts are committed), config, errors, text; torch for search.
Never Ray or a decoder: a notebook that reads features needs neither.
"""
