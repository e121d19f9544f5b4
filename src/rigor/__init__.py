"""rigor: config-driven deep-learning research with a manifest for every run.

Importing the package is cheap: no torch import happens here, so that
``scripts/manifest.py`` stays fast.
"""

__version__ = "0.1.0"
