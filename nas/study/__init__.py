"""Comparison studies: the plan (where each run lives, as data), the processes that run it, its execution, and the
report and plots built from what the runs record."""
