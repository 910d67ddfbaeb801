"""Tuning methods: METHODS (what each trains) and apply_method (make a model train it)."""

from lntune.methods.apply import apply_method, resolved_switches
from lntune.methods.registry import METHODS, Method

__all__ = ["METHODS", "Method", "apply_method", "resolved_switches"]
