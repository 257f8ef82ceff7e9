"""Executing a run: presets, the plan of (purifier, σ, image) units, executors (local, shards, Ray), resource
checks, the environment record, the runner that ties dataset, noise, purifier and classifier together, and
the artefacts a finished run leaves behind.

May import results and everything below it; never train or cli.
"""
