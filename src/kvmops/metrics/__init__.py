"""Metrics: pure computations over statistics snapshots (rates) and their exposition."""
