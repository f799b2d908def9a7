"""One way to read and write files and Parquet tables on a local path or `s3://bucket/prefix`.

S3 settings come from the standard AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION, AWS_ENDPOINT_URL) and from the config's
`storage:` section, which `configure()` exports to that same environment so Ray workers (which
inherit it through the runtime_env) see the same endpoint as the driver.

Every write is a whole object: local files are written to a temporary name and renamed, S3
objects are one upload that only appears when complete. So a crash never leaves a half file under
a final name.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import posixpath
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger(__name__)
T = TypeVar("T")

# Words in an error that mark it as worth retrying (throttling, 5xx, dropped connections).
_TRANSIENT = (
    "503", "500", "502", "504", "slowdown", "slow down", "throttl", "timeout", "timed out",
    "connection", "network", "reset by peer", "broken pipe", "internal error", "serviceunavailable",
    "curl", "temporarily",
)
# Words that mark an error as final: retrying cannot help.
_FINAL = ("access denied", "access_denied", "invalidaccesskeyid", "signaturedoesnotmatch",
          "invalid_access_key_id", "signature_does_not_match",
          "nosuchbucket", "no such bucket", "forbidden", "403")
# S3 refusing the credentials or the access (botocore codes and pyarrow's AWS error names, lowercased),
# with what a person should understand from it. First match wins.
_DENIED = (
    (("invalidaccesskeyid", "invalid_access_key_id", "invalidclienttokenid"),
     "the access key id is not known to S3 (InvalidAccessKeyId)"),
    (("signaturedoesnotmatch", "signature_does_not_match"),
     "the secret access key does not match the access key id (SignatureDoesNotMatch)"),
    (("expiredtoken", "expired_token", "invalidtoken", "invalid_token"),
     "the session token is expired or invalid (ExpiredToken/InvalidToken)"),
    (("accessdenied", "access_denied", "access denied"),
     "access denied (AccessDenied): the credentials were rejected or may not use this bucket"),
)


class StorageAccessDenied(PermissionError):
    """S3 rejected the credentials or refused access: final, never retried; the message says what to fix."""


@dataclass(frozen=True)
class S3Settings:
    endpoint: str | None = None
    region: str | None = None
    retries: int = 5
    backoff_s: float = 0.2


_settings = S3Settings()


def configure(endpoint: str | None = None, region: str | None = None, retries: int | None = None,
              backoff_s: float | None = None) -> None:
    """Set S3 endpoint/region/retries for this process and export them for child workers."""
    global _settings
    _settings = S3Settings(
        endpoint=endpoint or _settings.endpoint,
        region=region or _settings.region,
        retries=_settings.retries if retries is None else retries,
        backoff_s=_settings.backoff_s if backoff_s is None else backoff_s,
    )
    if endpoint:
        os.environ["AWS_ENDPOINT_URL"] = endpoint
    if region:
        os.environ["AWS_REGION"] = region
    os.environ["REELFORGE_STORAGE_RETRIES"] = str(_settings.retries)
    _s3_filesystem.cache_clear()


def storage_env() -> dict[str, str]:
    """The environment variables a Ray worker needs to reach the same storage as this process."""
    keys = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "REELFORGE_STORAGE_RETRIES")
    return {k: os.environ[k] for k in keys if os.environ.get(k)}


# ----------------------------------------------------------------------------- URIs


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or s3:// URI."""
    if is_s3(uri):
        return uri.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts)
    return os.path.join(uri, *parts)


def _endpoint() -> str | None:
    return _settings.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _retries() -> int:
    return int(os.environ.get("REELFORGE_STORAGE_RETRIES", _settings.retries))


@functools.lru_cache(maxsize=4)
def _s3_filesystem() -> pafs.S3FileSystem:
    endpoint = _endpoint()
    kwargs: dict = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max(1, _retries())),
                    # bounded waits: a dead endpoint is an error to retry, never a hang
                    "connect_timeout": 10.0, "request_timeout": 60.0}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    region = _settings.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    elif endpoint:
        kwargs["region"] = "us-east-1"  # S3-compatible stores ignore it; avoids a region lookup call
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for `uri` and the path inside it."""
    if is_s3(uri):
        parsed = urlparse(uri)
        return _s3_filesystem(), (parsed.netloc + parsed.path).rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


# ----------------------------------------------------------------------------- retries


def is_transient(exc: BaseException) -> bool:
    """True when an error is worth retrying (throttling, 5xx, a dropped connection)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    # request ids are random letters and digits: they must not read as a 503 or a 403
    text = re.sub(r"request id: [^)]*", "", str(exc).lower())
    if any(w in text for w in _FINAL):
        return False
    return isinstance(exc, OSError) and any(w in text for w in _TRANSIENT)


def access_denied(exc: BaseException, what: str) -> StorageAccessDenied | None:
    """A StorageAccessDenied saying what to fix when `exc` is S3 rejecting the credentials, else None."""
    if isinstance(exc, StorageAccessDenied) or isinstance(exc, (FileNotFoundError, IsADirectoryError)):
        return None
    text = str(exc)
    low = text.lower()
    why = next((w for words, w in _DENIED if any(k in low for k in words)), None)
    if why is None:
        return None
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if secret:  # S3 never echoes it, but an error text must not be the one place it leaks
        text = text.replace(secret, "***")
    bucket = re.search(r"s3://([^/\s]+)", what)
    where = f"bucket '{bucket.group(1)}'" if bucket else "this bucket"
    endpoint = re.sub(r"//[^@/]*@", "//", _endpoint() or "AWS default")  # never a user:password@
    return StorageAccessDenied(
        f"{what}: S3 rejected the request: {why}. Not retried. Check AWS_ACCESS_KEY_ID and "
        f"AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or AWS_PROFILE, in the environment of this "
        f"command and of the Ray workers, and that those credentials may access {where} "
        f"(endpoint: {endpoint}). [{text}]")


def with_retries(fn: Callable[[], T], what: str, attempts: int | None = None) -> T:
    """Call fn, retrying transient storage errors with jittered exponential backoff.

    Rejected credentials and access denied are final: raised at once as StorageAccessDenied."""
    attempts = attempts or max(1, _retries())
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified below
            denied = access_denied(exc, what)
            if denied is not None:
                raise denied from None
            if attempt == attempts or not is_transient(exc):
                raise
            delay = _settings.backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random())
            log.warning("storage: %s failed (%s), retry %d/%d in %.2fs", what, exc, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- files


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    info = with_retries(lambda: fs.get_file_info(path), f"stat {uri}")
    return info.type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    if not is_s3(uri):  # S3 has no directories
        os.makedirs(uri, exist_ok=True)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)

    def _read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return with_retries(_read, f"read {uri}")


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object: it appears complete under its name or not at all."""
    if not is_s3(uri):
        directory = os.path.dirname(os.path.abspath(uri))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, uri)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return
    fs, path = filesystem(uri)

    def _put() -> None:
        with fs.open_output_stream(path) as f:
            f.write(data)

    with_retries(_put, f"write {uri}")


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def delete(uri: str) -> None:
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        with_retries(lambda: fs.delete_file(path), f"delete {uri}")


def _file_infos(uri: str, recursive: bool) -> list[tuple[str, pafs.FileInfo]]:
    fs, path = filesystem(uri)
    selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
    infos = with_retries(lambda: fs.get_file_info(selector), f"list {uri}")
    prefix = "s3://" if is_s3(uri) else ""
    return [(prefix + i.path, i) for i in infos if i.type == pafs.FileType.File]


def list_files(uri: str, recursive: bool = True) -> list[str]:
    """Sorted URIs of the files under a directory or prefix (symlink loops are not followed)."""
    return sorted(u for u, _ in _file_infos(uri, recursive))


def file_identities(uri: str, recursive: bool = False) -> dict[str, str]:
    """{file URI: "size:mtime"} under a directory or prefix: what changes when a file is rewritten."""
    infos = sorted(_file_infos(uri, recursive), key=lambda x: x[0])
    return {u: f"{i.size}:{i.mtime.timestamp() if i.mtime else 0:.6f}" for u, i in infos}


def size(uri: str) -> int:
    fs, path = filesystem(uri)
    return with_retries(lambda: fs.get_file_info(path), f"stat {uri}").size


@contextlib.contextmanager
def open_seekable(uri: str) -> Iterator[BinaryIO]:
    """A seekable binary file for a local path or an S3 object (ranged reads, no full download)."""
    if not is_s3(uri):
        with open(uri, "rb") as f:
            yield f
        return
    fs, path = filesystem(uri)
    f = with_retries(lambda: fs.open_input_file(path), f"open {uri}")
    try:
        yield f
    finally:
        f.close()


# ----------------------------------------------------------------------------- Parquet


def write_table(table: pa.Table, uri: str, **parquet) -> None:
    """Write one Parquet file as a whole object; `parquet`: pyarrow.parquet.write_table keywords
    (e.g. row_group_size, write_statistics)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, **{"compression": "zstd", **parquet})
    write_bytes(uri, buf.getvalue())


def read_table(uri: str, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read one Parquet file, or every `*.parquet` file under a directory in name order."""
    fs, path = filesystem(uri)
    info = with_retries(lambda: fs.get_file_info(path), f"stat {uri}")
    if info.type == pafs.FileType.File:
        files = [path]
    else:
        files = [u[len("s3://"):] if is_s3(uri) else u for u in list_files(uri) if u.endswith(".parquet")
                 and not posixpath.basename(u).startswith(".")]
    if not files:
        if schema is None:
            raise FileNotFoundError(f"no Parquet files under {uri}")
        return schema.empty_table() if columns is None else schema.empty_table().select(columns)
    tables = [with_retries(lambda f=f: pq.read_table(f, filesystem=fs, columns=columns),
                           f"read {'s3://' + f if is_s3(uri) else f}") for f in files]
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


# ----------------------------------------------------------------------------- folders <-> s3 prefixes


def _copy_file(src: str, dst: str) -> None:
    """Stream one file from `src` to `dst` (each local or s3://); on S3 it appears whole or not at all."""
    (src_fs, src_path), (dst_fs, dst_path) = filesystem(src), filesystem(dst)
    if not is_s3(dst):
        os.makedirs(os.path.dirname(dst_path), exist_ok=True)
    with_retries(lambda: pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs),
                 f"copy {src} -> {dst}")


def download_dir(uri: str, local: str, only: tuple[str, ...] = ()) -> list[str]:
    """Copy the files under `uri` (an s3:// prefix or a folder) into the local folder `local`, keeping
    their relative paths; `only` keeps those under these relative names. Returns the relative paths."""
    _, root = filesystem(uri)
    copied = []
    for f in list_files(uri):
        rel = filesystem(f)[1][len(root):].lstrip("/")
        parts = rel.split("/")
        if only and not any(parts[: len(o.strip("/").split("/"))] == o.strip("/").split("/") for o in only):
            continue
        if any(p in ("", ".", "..") for p in parts):  # a key must not climb out of the folder
            raise ValueError(f"refusing to download {f}: unsafe relative path {rel!r}")
        _copy_file(f, os.path.join(local, *parts))
        copied.append(rel)
    if not copied:
        raise FileNotFoundError(f"no files under {uri}" + (f" in {list(only)}" if only else ""))
    return copied


def upload_dir(local: str, uri: str) -> list[str]:
    """Copy every file under the local folder `local` to `uri` (s3:// or a folder), each a whole
    object, keeping relative paths; returns them."""
    rels = sorted(p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file())
    for rel in rels:
        _copy_file(os.path.join(local, rel), join(uri, rel))
    return rels


@contextlib.contextmanager
def local_copy(uri: str, only: tuple[str, ...] = ()) -> Iterator[str]:
    """A local folder holding the files of `uri`: the folder itself when local, else a temporary
    download (of `only` when given) that is removed after the block."""
    if not is_s3(uri):
        yield uri
        return
    tmp = tempfile.mkdtemp(prefix="rf-download-")
    try:
        download_dir(uri, tmp, only)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(uri: str) -> Iterator[str]:
    """A local folder to write into that ends up at `uri`: the folder itself when local, else a
    temporary folder uploaded whole when the block succeeds, and removed."""
    if not is_s3(uri):
        os.makedirs(uri, exist_ok=True)
        yield uri
        return
    tmp = tempfile.mkdtemp(prefix="rf-upload-")
    try:
        yield tmp
        upload_dir(tmp, uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
