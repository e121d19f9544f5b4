"""Post-hoc calibration: temperature scaling and selective threshold policies."""
