"""The frozen-encoder probe (scripts/probe.py): features of an encoder, then PCA and ridge
regression per gene with patient-level folds, as HEST-Benchmark scores encoders."""
