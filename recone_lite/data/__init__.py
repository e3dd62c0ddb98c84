"""Raw review dumps -> one common interaction record -> a prepared, leak-free split on disk.

`records` (the record and the reading state), `readers` (plain/gzip lines), one loader module per
source family (`amazon`, `yelp`, `movielens`, `reason4rec`), `sources` (the `--source` registry),
`prepare` (k-core, split, histories, output) and `stats`. Nothing is imported here, so importing
`recone_lite.data` stays cheap.
"""
