"""Metrics (selective, calibration, classification, regression), their bootstrap CIs and
the engine that computes them on shared resamples; the numba kernels (kernels_numba) and
their numpy twins (kernels_numpy). No torch, no plotting, no stage."""
