"""Metrics as pure functions (no model), exactly the official rules (docs/evaluation.md lists them per benchmark)."""
