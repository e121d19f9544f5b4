"""Finished runs, beside the stage contract: checkpoints (their format, saving and loading),
the device choice, prediction over a loader, and rebuilding a run's model and data from its
manifest. Training writes runs through this package; eval, xai, export and predict read them
through it, so no stage imports the trainer."""
