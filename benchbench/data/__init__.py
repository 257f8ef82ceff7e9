"""Datasets: the registry of dataset loaders, the embedded digits, and the published sets (CIFAR-10,
ImageNet-64, image folders; full-resolution ImageNet, decoded lazily). Every loader returns images in [0, 1]
with their labels.

May import only registry and errors.
"""
