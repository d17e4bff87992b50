"""The blackbox NOMAD calls: one point file in, objective lines out; trains with accelerate (train.py)."""
