"""Raw behavior logs -> the sequence dataset, on Arrow tables (pyarrow and numpy only).

`formats` parses log formats into event tables and dead letters; `core` plans inputs, builds
per-user histories, vocabularies and splits and writes the dataset; `reference` runs the
whole transform in one process. The Beam job (`ptum.data.ingest.job`) distributes the
same steps.
"""
