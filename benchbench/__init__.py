"""benchbench: compare diffusion purifiers for randomized-smoothing certification on equal terms."""

__version__ = "0.1.0"
