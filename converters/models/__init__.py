"""PyTorch modules the shipped mapping tables target when torchvision has no equivalent."""
