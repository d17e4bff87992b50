"""The shared floor (config, space, data, model loading, run folders, NOMAD text, failures, checks):
what the optimiser (bbo/), the blackbox (blackbox/) and the metrics (eval/) all use. Imports nothing above it."""
