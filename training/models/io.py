"""One way to save and load a ReelForge model: `config.json` (its config dataclass) + `model.safetensors`.

No pickle anywhere: a checkpoint from an untrusted source can hold tensors and a JSON config, and
unknown config keys are refused by name instead of being silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar

from safetensors.torch import load_file, save_file


def config_from_dict(cls, data: dict):
    """Build a config dataclass, refusing unknown keys by name (JSON lists become tuples)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {unknown}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def from_preset(cls, presets: dict, preset_or_config, what: str, **overrides):
    """cls(config) from a preset name (or a config), with fields overridden; unknown names fail by name."""
    if isinstance(preset_or_config, str):
        if preset_or_config not in presets:
            raise KeyError(f"unknown {what} {preset_or_config!r}; known: {sorted(presets)}")
        preset_or_config = presets[preset_or_config]
    return cls(dataclasses.replace(preset_or_config, **overrides))


class PretrainedMixin:
    """`save_pretrained(dir)` / `cls.from_pretrained(dir, device)` for an nn.Module built as `cls(config)`."""

    config_class: ClassVar[type]

    def save_pretrained(self, directory) -> None:
        """Write config.json and model.safetensors (no pickle)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory, device="cpu"):
        path = Path(directory)
        config = config_from_dict(cls.config_class, json.loads((path / "config.json").read_text()))
        model = cls(config)
        model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)))
        return model.to(device)
