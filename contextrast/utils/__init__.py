"""Shared utilities below every stage: process groups and reductions, checkpoint I/O."""
