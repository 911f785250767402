"""Evaluation: predictions of every head, gathered exactly across ranks, and their metrics."""
