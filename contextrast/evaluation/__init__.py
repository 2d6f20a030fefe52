"""Evaluation: metrics, the evaluator and its loop over a dataset, inference protocols,
reports and the paper's analyses."""
