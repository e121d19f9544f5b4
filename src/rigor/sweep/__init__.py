"""Sweeps: grid expansion, local and submitit launchers, summaries ranked on val_select."""
