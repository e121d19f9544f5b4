"""Figures: the plot functions (plots), the figures the stages draw from them (figures), and
the pool of worker processes that draws them beside the work (pool)."""
