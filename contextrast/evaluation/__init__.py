"""Evaluation: metrics (and, later, the evaluator)."""
