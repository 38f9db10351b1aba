"""Checking an export against its reference (import name gemma_export.verify): compare.py holds the
one fp32 rule and its tolerance; validate.py measures an artifact's parity over prompts
(`gemma-export validate`); pass_bisect.py exports again and finds the first group of passes that
leaves tolerance (`validate --bisect`), with walk.py (the checks after each group), snapshot.py (a
group's graph and what its values mean) and bisect_report.py (the verdict and the table)."""
