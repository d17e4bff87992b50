"""Evaluation of trained runs: validation loss and MMLU accuracy."""
