"""Explanations: Captum attributions, rendering, sanity checks, the stage and the worker."""
