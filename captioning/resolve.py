"""Which captioner a caption job loads: a hub name or local path checked before Ray starts, or the
tiny random placeholder built once into the output (so a resumed job captions with the same weights)."""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from captioning.models import PLACEHOLDER_FILE, CaptionerNotAvailable, _not_available, build_tiny_captioner, is_placeholder
from infra import storage
from infra.config import ReelForgeConfig

log = logging.getLogger(__name__)
TINY = "tiny-random"


@contextlib.contextmanager
def resolve_model(cfg: ReelForgeConfig, output: str, model: str | None) -> Iterator[tuple[str, str, bool]]:
    """(name for the table, what the actors load, placeholder?) for `model` or caption.model.

    `tiny-random` is built once (seeded by caption.seed) into `{output}/_models/tiny-captioner`
    and reused from there, so a resumed job captions with the same weights. For an s3:// output
    the actors load a local copy that is removed afterwards. A hub name is checked here (config
    only) so a missing model fails before Ray starts, not inside every actor.
    """
    name = model or cfg.caption.model
    if name != TINY:
        path = check_available(name)
        yield name, path, is_placeholder(path)
        return
    c = cfg.caption
    saved = storage.join(output, "_models", "tiny-captioner")
    if not storage.is_s3(output):
        saved = os.path.abspath(saved)  # Ray workers do not share the driver's working directory
        if not is_placeholder(saved):
            build_tiny_captioner(saved, seed=c.seed, num_frames=c.num_frames)
        yield TINY, saved, True
        return
    local = tempfile.mkdtemp(prefix="reelforge-tiny-captioner-")
    try:
        files = storage.list_files(saved)
        if any(posixpath.basename(f) == PLACEHOLDER_FILE for f in files):
            for f in files:
                Path(local, posixpath.basename(f)).write_bytes(storage.read_bytes(f))
        else:
            build_tiny_captioner(local, seed=c.seed, num_frames=c.num_frames)
            # the placeholder marker goes up last: the saved copy is complete once it is there
            for f in sorted(os.listdir(local), key=lambda f: f == PLACEHOLDER_FILE):
                storage.write_bytes(storage.join(saved, f), Path(local, f).read_bytes())
        yield TINY, local, True
    finally:
        shutil.rmtree(local, ignore_errors=True)


def models_at_start(cfg: ReelForgeConfig, model: str | None, model_free: bool) -> list[str]:
    """The random-weights notes of the captioner and the CLIP scorer the job would load; refused (or a
    missing scorer checkpoint reported) here, before anything is loaded or Ray starts."""
    from training.models.clip import check_clip, is_random_clip
    from training.models.hub import random_note, refuse_random

    c, name = cfg.caption, model or cfg.caption.model
    notes = []
    if not model_free and (name == TINY or is_placeholder(os.path.expanduser(name))):
        notes.append(random_note("captioner", name))
    if not model_free and c.clip_model and is_random_clip(c.clip_model, c.clip_pretrained):
        notes.append(random_note("CLIP scorer", c.clip_model))
    notes = refuse_random(notes, "caption", c.allow_random_weights)
    if not model_free and c.clip_model:
        check_clip(c.clip_model, c.clip_pretrained)
    return notes


def check_available(name: str) -> str:
    """What the actors load: an absolute local directory, or a hub name whose config resolves."""
    from transformers import AutoConfig

    if name.startswith(("/", "./", "../", "~")) or os.path.isdir(name):
        path = os.path.abspath(os.path.expanduser(name))
        if not os.path.isdir(path):
            raise CaptionerNotAvailable(f"captioner directory {name!r} does not exist")
        return path
    try:
        AutoConfig.from_pretrained(name)
    except OSError as e:
        raise _not_available(name, e) from e
    return name


def placeholder_warning(name: str) -> None:
    log.warning("\n%s\nCAPTIONS ARE PLACEHOLDERS: caption model %r is a tiny randomly initialised "
                "model.\nIts text means nothing. Set caption.model (or --model) to a real "
                "video/image-to-text model before training on these captions.\n%s",
                "!" * 78, name, "!" * 78)
