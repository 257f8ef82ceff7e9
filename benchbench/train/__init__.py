"""Training the models benchbench ships (`bench train classifier|ddpm|consistency|…` reproduce them) and the
consistency models' acceptance checks (`bench evaluate`) with their criteria.

May import run (the environment record) and everything below it; never cli.
"""
