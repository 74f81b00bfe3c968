"""Evaluation of reconstructions and of features."""
