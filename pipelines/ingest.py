"""Ingest: turn a source (directory, glob, list file, s3:// prefix, single file) into sorted input URIs
(videos, and images when their extensions are listed: curate.image_extensions)."""

from __future__ import annotations

import glob
import os

from infra import storage

_LIST_SUFFIXES = (".txt", ".lst", ".list", ".uris")


class IngestError(ValueError):
    """The source itself cannot be listed (missing folder, empty prefix): the whole job stops."""


def _has_ext(uri: str, extensions: tuple[str, ...]) -> bool:
    return uri.lower().endswith(extensions)


def _walk_local(root: str, extensions: tuple[str, ...]) -> list[str]:
    # followlinks=False: a symlink loop in the input folder cannot make the walk endless;
    # symlinked *files* are still listed (and fail at probe if broken).
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in filenames:
            if _has_ext(name, extensions):
                found.append(os.path.join(dirpath, name))
    return found


def _read_list_file(path: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(path)) if not storage.is_s3(path) else None
    uris = []
    for line in storage.read_text(path).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if base is not None and not storage.is_s3(line) and not os.path.isabs(line):
            line = os.path.join(base, line)
        uris.append(line if storage.is_s3(line) else os.path.abspath(line))
    return uris


def media_type(uri: str, image_extensions: list[str] | tuple[str, ...]) -> str:
    """"image" for a file with an image extension (a one-frame clip), else "video"."""
    return "image" if _has_ext(uri, tuple(e.lower() for e in image_extensions)) else "video"


def list_inputs(source: str, extensions: list[str] | tuple[str, ...]) -> list[str]:
    """Sorted, de-duplicated input URIs of a source; files without a video extension are skipped."""
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if storage.is_s3(source):
        if _has_ext(source, exts):
            uris = [source]
        elif source.endswith(_LIST_SUFFIXES):
            uris = _read_list_file(source)
        else:
            uris = [u for u in storage.list_files(source) if _has_ext(u, exts)]
    elif any(c in source for c in "*?["):
        uris = [os.path.abspath(p) for p in glob.glob(source, recursive=True)
                if os.path.isfile(p) and _has_ext(p, exts)]
    elif os.path.isdir(source):
        uris = _walk_local(os.path.abspath(source), exts)
    elif os.path.isfile(source) and source.lower().endswith(_LIST_SUFFIXES):
        uris = _read_list_file(source)
    elif os.path.lexists(source):
        uris = [os.path.abspath(source)]
    else:
        raise IngestError(f"input not found: {source} (expected a folder, a glob, a list file or s3:// prefix)")
    return sorted(set(uris))
