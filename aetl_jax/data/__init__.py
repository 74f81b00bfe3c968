"""Datasets as in-memory arrays, splits and label budgets."""
