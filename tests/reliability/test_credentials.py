"""Wrong credentials against a real S3 endpoint: moto's server with IAM authentication on, so S3
itself answers 403 InvalidAccessKeyId / SignatureDoesNotMatch. Every storage call and a real curate
job (in process and through the CLI) must fail at once, never retry, say which bucket and what to fix,
never print the secret, and leave nothing written."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import boto3
import pyarrow as pa
import pytest

from infra import storage
from infra.config import load_config
from infra.videogen import Scene, write_video
from pipelines.runner import run_curate

ROOT = Path(__file__).resolve().parents[2]
# With this backoff one retried call sleeps at least 0.5 * 2 * (1 + 2 + 4 + 8) = 15 s (5 attempts):
# a call that fails in well under a second was not retried.
BACKOFF_S = 2.0
FAST_S = 1.5
CLI_FAST_S = 40.0  # the CLI process also starts Python and imports pyarrow, ray, torch...
RETRY_LOG = re.compile(r"retry \d+/\d+")  # infra.storage's log line for each retry
WRONG_SECRET = "wr0ng-SECRET-" + uuid.uuid4().hex  # a value that must never be printed
CASES = {"unknown key": "InvalidAccessKeyId", "wrong secret": "SignatureDoesNotMatch"}


def _set_auth(endpoint: str, initial_no_auth: str) -> None:
    """moto's server-mode switch: "0" checks every request's signature and IAM policy, "inf" none."""
    req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=initial_no_auth.encode(), method="POST",
                                 headers={"Content-Type": "text/plain"})  # not a form: moto reads the raw body
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def _use_credentials(monkeypatch, key_id: str, secret: str) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    storage.configure(retries=5, backoff_s=BACKOFF_S)  # also drops the cached S3 client


@pytest.fixture
def s3_auth(s3_server, monkeypatch):
    """A bucket holding one table, a real IAM key allowed everything, and moto checking credentials."""
    bucket = f"rf-auth-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    storage.write_table(pa.table({"a": [1, 2, 3]}), f"s3://{bucket}/seed/part-0.parquet")
    iam = boto3.client("iam", endpoint_url=s3_server, region_name="us-east-1")
    user = f"rf-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    _set_auth(s3_server, "0")
    try:
        yield {"endpoint": s3_server, "bucket": f"s3://{bucket}", "name": bucket,
               "key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}
    finally:
        _set_auth(s3_server, "inf")
        monkeypatch.undo()  # the session's credentials back, then a fresh client with them
        storage.configure(endpoint=s3_server, region="us-east-1", retries=5, backoff_s=0.05)


def _objects(s3_auth) -> list[str]:
    """Every key in the bucket (switches moto's auth off first: the test is done with it)."""
    _set_auth(s3_auth["endpoint"], "inf")
    s3 = boto3.client("s3", endpoint_url=s3_auth["endpoint"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_auth["name"]).get("Contents", []))


def _bad(s3_auth, case: str) -> tuple[str, str]:
    if case == "unknown key":
        return "AKIA" + uuid.uuid4().hex[:16].upper(), WRONG_SECRET
    return s3_auth["key_id"], WRONG_SECRET


def _assert_actionable(message: str, bucket: str, code: str, secrets: tuple[str, ...]) -> None:
    assert bucket in message  # which bucket/URI
    assert code in message  # what S3 said
    assert "rejected" in message
    assert "AWS_ACCESS_KEY_ID" in message and "AWS_SECRET_ACCESS_KEY" in message and "AWS_PROFILE" in message
    for s in secrets:
        assert s not in message


@pytest.mark.parametrize("case", CASES)
def test_storage_calls_fail_fast_with_an_actionable_error(s3_auth, monkeypatch, caplog, case):
    bucket, code = s3_auth["bucket"], CASES[case]
    # the endpoint really checks credentials: the IAM key reads and writes
    _use_credentials(monkeypatch, s3_auth["key_id"], s3_auth["secret"])
    storage.write_table(pa.table({"a": [4]}), f"{bucket}/good/part-0.parquet")
    assert storage.read_table(f"{bucket}/seed").num_rows == 3

    _use_credentials(monkeypatch, *_bad(s3_auth, case))
    calls = {
        "write_table": lambda: storage.write_table(pa.table({"a": [5]}), f"{bucket}/bad/part-0.parquet"),
        "write_text": lambda: storage.write_text(f"{bucket}/bad/_markers/p0.json", "{}"),
        "read_table": lambda: storage.read_table(f"{bucket}/seed"),
        "list_files": lambda: storage.list_files(f"{bucket}/seed"),
        "exists": lambda: storage.exists(f"{bucket}/seed/part-0.parquet"),
        "read_bytes": lambda: storage.read_bytes(f"{bucket}/seed/part-0.parquet"),
    }
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="werkzeug")  # moto's server logs one line per request
    for name, call in calls.items():
        caplog.clear()
        t0 = time.perf_counter()
        with pytest.raises(storage.StorageAccessDenied) as err:
            call()
        elapsed = time.perf_counter() - t0
        assert elapsed < FAST_S, f"{name} took {elapsed:.2f}s: retried?"
        msg = str(err.value)
        _assert_actionable(msg, bucket, code if name in ("write_table", "write_text", "list_files") else
                           "AccessDenied", (WRONG_SECRET, s3_auth["secret"]))
        assert err.value.__cause__ is None and err.value.__suppress_context__
        # exactly one request reached S3 and was refused: no retry by us nor by the AWS SDK
        refused = [r for r in caplog.records if r.name == "werkzeug" and " 403 " in r.getMessage()]
        assert len(refused) == 1, [r.getMessage() for r in refused]
        assert not RETRY_LOG.search(caplog.text)
        for secret in (WRONG_SECRET, s3_auth["secret"]):
            assert secret not in caplog.text
    keys = _objects(s3_auth)
    assert keys == ["good/part-0.parquet", "seed/part-0.parquet"]  # nothing under bad/


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    src = tmp_path_factory.mktemp("cred-src")
    for i in range(2):
        write_video(src / f"v{i}.mp4", [Scene(24 + i)], fps=24, seed=40 + i)
    return src


@pytest.mark.parametrize("where", ["output", "input"])
def test_curate_with_wrong_credentials_fails_at_once_and_writes_nothing(s3_auth, monkeypatch, caplog, videos, where):
    bucket = s3_auth["bucket"]
    source = f"{bucket}/videos" if where == "input" else str(videos)
    if where == "input":
        _use_credentials(monkeypatch, s3_auth["key_id"], s3_auth["secret"])
        for p in sorted(videos.iterdir()):
            storage.write_bytes(f"{bucket}/videos/{p.name}", p.read_bytes())
    output = f"{bucket}/curated"
    _use_credentials(monkeypatch, *_bad(s3_auth, "wrong secret"))
    cfg = load_config(ROOT / "configs/tiny.yaml", [f"storage.backoff_s={BACKOFF_S}", "storage.retries=5"])
    caplog.set_level(logging.DEBUG)
    t0 = time.perf_counter()
    with pytest.raises(storage.StorageAccessDenied) as err:
        run_curate(cfg, source, output)
    elapsed = time.perf_counter() - t0
    assert elapsed < FAST_S, f"curate took {elapsed:.2f}s to fail"
    _assert_actionable(str(err.value), f"{bucket}/videos" if where == "input" else f"{output}/_markers",
                       "SignatureDoesNotMatch", (WRONG_SECRET, s3_auth["secret"]))
    assert WRONG_SECRET not in caplog.text and not RETRY_LOG.search(caplog.text)
    assert not [k for k in _objects(s3_auth) if k.startswith("curated/")]  # no marker, no part, no config


def test_cli_curate_with_wrong_credentials_exits_nonzero_with_the_message(s3_auth, cli_env, videos):
    bucket = s3_auth["bucket"]
    env = {**cli_env, "AWS_ACCESS_KEY_ID": "AKIA" + uuid.uuid4().hex[:16].upper(),
           "AWS_SECRET_ACCESS_KEY": WRONG_SECRET, "AWS_ENDPOINT_URL": s3_auth["endpoint"]}
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["reelforge", "curate", "--input", str(videos), "--output", f"{bucket}/cli", "-c", "configs/tiny.yaml",
         "--set", "storage.backoff_s=10", "--set", "storage.retries=5"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0, proc.stdout + proc.stderr
    both = proc.stdout + proc.stderr
    _assert_actionable(both, f"{bucket}/cli", "InvalidAccessKeyId", (WRONG_SECRET, s3_auth["secret"]))
    assert not RETRY_LOG.search(both)
    assert elapsed < CLI_FAST_S, f"CLI took {elapsed:.1f}s"  # a retried call alone would sleep >= 75 s
    assert not [k for k in _objects(s3_auth) if k.startswith("cli/")]
