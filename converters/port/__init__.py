"""`convert port`: a readable PyTorch module, a mapping table and weights from a source model's graph."""
