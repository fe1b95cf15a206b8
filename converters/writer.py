"""Compatibility name for `converters.writers` (atomic outputs, streamed .safetensors and .pth)."""
from .writers import atomic_output, output_kind, remove_stale_partials, save_pth, stream_pth, stream_safetensors

__all__ = ["atomic_output", "output_kind", "remove_stale_partials", "save_pth", "stream_pth", "stream_safetensors"]
