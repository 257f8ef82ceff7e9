"""Independent re-implementations of original research code, written for the tests (never imported by
benchbench): the converters are checked against these, not against their own mappings."""
