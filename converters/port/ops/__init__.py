"""Emitters: one module per op family, each turning canonical nodes into PyTorch code."""
