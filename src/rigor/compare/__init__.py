"""Paired A/B comparison of finished runs (scripts/compare.py)."""
