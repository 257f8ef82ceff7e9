"""The run directory and everything that reads it: the row format and summaries (rundir), the run lock, the
paper table (report), figures (plots), published rows (importer), shard merging and purification quality.

May import purifiers (through the registry), models, smoothing, data, registry and errors; never run or train.
"""
