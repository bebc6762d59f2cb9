"""Evaluation: metrics, train/test splits and cross-validation."""
