"""Approximate search at corpus scale: an index of an output's embeddings, published under the output's
commit protocol and kept fresh by every run, plus near-duplicate groups.

`ann` (FAISS: the index type chosen by measurement, exact re-ranking, threads), `synthetic` (embeddings
with the structure of real ones, for tests and benchmarks), `published` (the index's files in
`OUT/index/<kind>/`, manifest last), `coverage` (which rows count and what lacks, against the ledger),
`build` (`vidfeat index`, and the extension after each run), `searcher` (an index ready to answer, and
why it may not), `dedup` (`vidfeat dedup`). See docs/ARCHITECTURE.md, "Index".

May import: `store` (the ledger, publishing), config, errors; faiss, numpy, pyarrow. Never the readers
(they use this package), Ray, torch, the model or a decoder.
"""
