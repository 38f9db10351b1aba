"""Graph passes. Each pass is one module with a NAME and `run(model, ctx) -> int` (how many
rewrites it made); pipeline.py lists them per target, in order."""
