"""Raw behavior logs -> the sequence dataset, on Arrow tables (pyarrow and numpy only), in the
order a tokenize run takes:

  formats     log formats -> event tables and dead letters (one parser per format)
  plan        TokenizeOptions; input files found and checked before anything runs
  reader      units of work (files, byte ranges, Parquet row groups) -> parsed events
  sessions    per-user histories: grouped, time-ordered, de-duplicated, truncated
  vocabulary  item / behavior / title-word vocabularies (or frozen ones of a dataset)
  splitting   histories -> sequence rows of each split, left-out users counted
  sink        the staged output: shards, vocabulary tables, the manifest last

`job` composes them into the Beam job (composite PTransforms, any runner); `reference` runs
the same steps in one process. Both write the same dataset.
"""
