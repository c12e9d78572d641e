"""Benchmarks. Each prints one table with the reference measured in the same run; results are
logged with command, machine and date in RESULTS.md."""
