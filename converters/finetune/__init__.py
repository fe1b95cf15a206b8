"""The workflow around conversion: resumable checkpoints, partial loading with a report,
initialising what was not loaded, and fine-tuning helpers. See docs/finetune.md.

Names are imported on first use, so `converters.finetune.report` (used by the CLI) does not pull
in torch.
"""
import importlib

_EXPORTS = {
    "save_checkpoint": "checkpoints", "resume": "checkpoints", "load_checkpoint": "checkpoints",
    "checkpoint_paths": "checkpoints", "Resumed": "checkpoints", "unwrap": "checkpoints",
    "load_partial": "partial", "LoadReport": "partial",
    "init_params": "init", "InitReport": "init",
    "freeze": "tuning", "unfreeze": "tuning", "replace_head": "tuning", "param_groups": "tuning",
    "summary": "tuning", "ModelSummary": "tuning",
    "open_weights": "sources", "Report": "report",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
