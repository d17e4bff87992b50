"""Optimiser side: config, search space, NOMAD parameter file, drivers, run store, results."""
