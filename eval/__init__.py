"""Metrics of a trained adapter: validation loss and MMLU accuracy (imports core only)."""
