"""HEST data: the HEST-1k layout reader (reader), one sample's files read and checked (files),
HEST-Benchmark task folders and their splits (bench), gene panels picked on the train split
(panels), and the generated tiles written in both layouts (write)."""
