"""Deployable bundles: writing them from a run, loading and checking them, predicting."""
