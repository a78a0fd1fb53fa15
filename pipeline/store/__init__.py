"""The output and its commit protocol: what a run writes and how a file becomes, or stops being, visible.

`ledger` (the state of an output: claims, records, index, fold), `ledger_state` (that state as a table),
`claims` and `records` (the protocol's files), `lease` (one writer at a time, with a heartbeat) and
`liveness` (whether a lease's holder may still write, by the store's clock), `commit`
(a part's Parquet and HDF5 files, then its record), `compaction` and `retire` (merging parts, retiring
rows), `segments` (the file names of a part), `parquet` and `hdf5` (the writers), `publish` (the one way
a file becomes visible: written aside, then renamed or created exclusively), `storage` (every call to a
file system under a deadline). See docs/ARCHITECTURE.md, "Commit protocol".

May import: config, errors, faults, text; fsspec, pyarrow, h5py, numpy. Never Ray, the model, torch or a
decoder: a reader of an output, and the tests of the protocol, need none of them.
"""
