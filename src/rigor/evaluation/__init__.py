"""The eval stage and its reports: it applies what calibrate fitted to val_test and fits
nothing (metrics live in rigor.metrics, figures in rigor.plotting)."""
