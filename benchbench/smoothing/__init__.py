"""Randomized smoothing itself and its contract with a purifier: CERTIFY/PREDICT with Clopper–Pearson bounds,
the keyed noise streams, the checks every purifier output passes, and NFE counting.

Knows nothing of purifiers' internals, models or run directories; may import data, registry and errors.
"""
