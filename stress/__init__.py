"""Load tests and benchmarks (run them with stress/run; see the README, Performance)."""
