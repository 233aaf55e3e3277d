"""Reliability harness of evsed: crash consistency, network faults, fuzzing, soak."""
