"""Abstention policies, one module each (threshold, gate, cascade, sets, crc, scrc, none),
listed once in :mod:`rigor.policies.registry`: how each is fitted on val_calib, built into a
bundle, applied to new outputs, reported on val_test, and the guarantee it states."""
