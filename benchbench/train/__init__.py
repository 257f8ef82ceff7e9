"""Training code for the models benchbench ships: `bench train classifier|ddpm` reproduce them."""
