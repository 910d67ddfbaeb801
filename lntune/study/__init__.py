"""`lntune compare`: studies of stage-2 runs side by side.

config.py: the YAML file as frozen dataclasses; runner.py: each run's config -> its run directory, evaluated;
report.py: report.md.
"""
