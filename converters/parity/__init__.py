"""Parity verification: run the source model in its own framework and the converted PyTorch model
on the same inputs, compare, and when they differ name the first layer that diverges."""
