"""The paper's analyses: layer representation similarity, gradient variance, norm drift."""
