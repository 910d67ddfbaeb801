"""Metrics as pure functions (no model), exactly the official rules of ../shared/EVAL_SPEC.md."""
