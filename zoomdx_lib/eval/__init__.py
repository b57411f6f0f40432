"""Stage 5: cached generations of every method, metrics with bootstrap intervals, and the paper's tables."""
