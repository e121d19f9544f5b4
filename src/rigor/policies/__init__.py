"""Abstention policies as bundles carry them: how each kind answers a sample (apply), the
guarantee it states. Calibration fits them; eval, export and predict apply them."""
