"""The optimiser program: CLI, NOMAD drivers, the parameter file, results tables, figures, report, plan."""
