"""Where pretrained weights come from, and the two ways a model can be refused at a job's start.

A model is a hub name (resolved through the Hugging Face cache, or the hub when online) or a local
path. `ensure_hub_file` checks a hub name before anything heavy starts: offline (HF_HUB_OFFLINE) a
name that is not in the cache fails with one message naming the model and how to provide it.
`refuse_random` turns the notes about randomly initialised models (a VAE preset, the tiny text
encoder, the placeholder captioner, an open_clip tower without pretrained weights) into a refusal,
unless the job's section sets `allow_random_weights: true`.
"""

from __future__ import annotations

import os


class ModelUnavailable(OSError):
    """A model that is neither a local path nor resolvable from the hub (or its cache, offline)."""


class RandomWeightsRefused(ValueError):
    """A job asked to run on randomly initialised weights without `allow_random_weights: true`."""


def hf_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them once, at import)."""
    from huggingface_hub import constants

    env = [os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")]
    return constants.HF_HUB_OFFLINE or any(v.strip().lower() in ("1", "true", "yes", "on") for v in env)


def looks_local(name: str) -> bool:
    """A path on this machine rather than a hub name ("org/model")."""
    return name.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(name))


def unavailable(kind: str, name: str, err: BaseException | str | None = None) -> ModelUnavailable:
    """The one message for a model that cannot be found: what, why, and how to provide it."""
    if looks_local(name):
        return ModelUnavailable(f"{kind} {name!r}: the local path does not exist or holds no model"
                                + (f" ({_first_line(err)})" if err else ""))
    why = ("HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache" if hf_offline()
           else "the Hugging Face hub did not serve it")
    return ModelUnavailable(
        f"cannot load {kind} {name!r}: {why}" + (f" ({_first_line(err)})" if err else "") + ". Provide it: "
        f"download it on a machine with network (`hf download {name.split(':')[0]}`) into the cache that "
        "HF_HOME points at and run with HF_HUB_OFFLINE=1, or give a local directory (save_pretrained) instead "
        "of the hub name.")


def _first_line(err) -> str:
    text = f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else str(err)
    return text.strip().splitlines()[0][:300] if text.strip() else ""


def ensure_hub_file(kind: str, name: str, filename: str = "config.json", subfolder: str | None = None) -> None:
    """Fail now, with `unavailable`'s message, unless `name` (hub id or local dir) has `filename`."""
    path = f"{subfolder}/{filename}" if subfolder else filename
    if looks_local(name):
        if not os.path.isfile(os.path.join(os.path.expanduser(name), path)):
            raise unavailable(kind, name, f"no {path} in it")
        return
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    try:
        if hf_offline():
            if not isinstance(try_to_load_from_cache(name, path), str):
                raise unavailable(kind, name)
        else:
            hf_hub_download(name, path)
    except ModelUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - invalid ids, HTTP and offline errors all mean "not available"
        raise unavailable(kind, name, e) from None


# ----------------------------------------------------------------------------- random weights


def random_note(kind: str, spec: str) -> str:
    """The capitals line every summary, manifest and report prints for a randomly initialised model."""
    return f"{kind.upper()} {spec!r} IS RANDOMLY INITIALISED: ITS OUTPUTS MEAN NOTHING"


def refuse_random(notes: list[str], section: str, allowed: bool) -> list[str]:
    """`notes` back when allowed (or empty); otherwise RandomWeightsRefused naming the models and the key."""
    if notes and not allowed:
        raise RandomWeightsRefused(
            f"refusing to run on random weights: {'; '.join(notes)}. Give pretrained models "
            f"(README 'Using real models'), or set {section}.allow_random_weights: true for tests and demos.")
    return list(notes)


def torch_dtype(name: str | None, device: str = "cpu"):
    """A dtype name ("auto": bf16 on a GPU, fp32 on the CPU) as a torch dtype; None stays None."""
    import torch

    if name is None:
        return None
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
