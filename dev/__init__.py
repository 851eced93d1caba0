"""The workshop: tools for developing and benchmarking testtime, not part of the installed package (README.md)."""
