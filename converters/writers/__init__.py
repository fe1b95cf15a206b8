"""Writing converted tensors: atomic outputs, streamed `.safetensors` and `.pth`."""
from .atomic import atomic_output, output_kind, remove_stale_partials
from .pth import save_pth, stream_pth
from .safetensors import stream_safetensors

__all__ = ["atomic_output", "output_kind", "remove_stale_partials", "save_pth", "stream_pth", "stream_safetensors"]
