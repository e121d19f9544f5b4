"""Metrics (selective, calibration, classification, regression), bootstrap CIs, reports."""
