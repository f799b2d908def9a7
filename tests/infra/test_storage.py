import os
from pathlib import Path

import pyarrow as pa
import pytest

from infra import storage


def _table(n=100):
    return pa.table({"clip_id": [f"c{i:04d}" for i in range(n)], "x": list(range(n))})


def test_local_whole_object_writes_and_listing(tmp_path):
    uri = str(tmp_path / "a" / "b.bin")
    storage.write_bytes(uri, b"hello")
    assert storage.read_bytes(uri) == b"hello"
    assert not [p for p in os.listdir(tmp_path / "a") if p.startswith(".tmp-")]  # no temp file left
    storage.write_table(_table(), str(tmp_path / "t" / "part-1.parquet"))
    storage.write_table(_table(5), str(tmp_path / "t" / "part-0.parquet"))
    back = storage.read_table(str(tmp_path / "t"))
    assert back.num_rows == 105
    assert storage.list_files(str(tmp_path / "t"))[0].endswith("part-0.parquet")


def test_s3_parquet_round_trip(s3_bucket):
    table = _table()
    storage.write_table(table, f"{s3_bucket}/ds/part-00000.parquet")
    storage.write_table(_table(3), f"{s3_bucket}/ds/part-00001.parquet")
    assert storage.exists(f"{s3_bucket}/ds/part-00000.parquet")
    back = storage.read_table(f"{s3_bucket}/ds")
    assert back.num_rows == 103
    assert back.slice(0, 100).equals(table)
    # through boto3 too: the object really is on the HTTP endpoint
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket[5:])["Contents"]]
    assert keys == ["ds/part-00000.parquet", "ds/part-00001.parquet"]


def test_s3_survives_throttling_and_dropped_connections(s3_bucket, faulty_s3):
    faulty_s3.fail_next = 1  # the endpoint answers the first request with 503 SlowDown
    storage.write_table(_table(), f"{s3_bucket}/r/part-0.parquet")
    assert faulty_s3.failed == 1
    faulty_s3.mode, faulty_s3.fail_next = "drop", 2  # then drops two connections unanswered
    storage.configure(endpoint=faulty_s3.endpoint)  # a fresh client: new connections meet the faults
    assert storage.read_table(f"{s3_bucket}/r").num_rows == 100
    assert faulty_s3.failed == 3


def test_s3_gives_up_with_clear_error_and_no_partial_object(s3_bucket, faulty_s3):
    faulty_s3.fail_next = 1000
    with pytest.raises(OSError):
        storage.write_bytes(f"{s3_bucket}/never.bin", b"x" * 1000)
    faulty_s3.fail_next = 0
    assert not storage.exists(f"{s3_bucket}/never.bin")


def test_missing_bucket_is_final_not_retried(s3_server):
    with pytest.raises(OSError) as err:
        storage.write_bytes("s3://no-such-bucket-rf/x.bin", b"x")
    assert "bucket" in str(err.value).lower()


def test_transient_classification():
    assert storage.is_transient(OSError("AWS Error SLOW_DOWN during PutObject: 503 Please reduce"))
    assert storage.is_transient(ConnectionResetError("reset by peer"))
    assert not storage.is_transient(FileNotFoundError("nope"))
    assert not storage.is_transient(OSError("AWS Error ACCESS_DENIED: 403 Forbidden"))


def test_rejected_credentials_map_to_an_actionable_final_error(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekrit-value")
    pyarrow_text = OSError("When listing objects under key 'p/' in bucket 'b': AWS Error INVALID_ACCESS_KEY_ID during "
                           "ListObjectsV2 operation: The AWS Access Key Id you provided does not exist in our records. "
                           "(Request ID: X503Y403sekrit-value)")
    botocore_text = Exception("An error occurred (SignatureDoesNotMatch) when calling the PutObject operation: ...")
    for exc, code in ((pyarrow_text, "InvalidAccessKeyId"), (botocore_text, "SignatureDoesNotMatch"),
                      (OSError("AWS Error ACCESS_DENIED during HeadObject operation: No response body."),
                       "AccessDenied")):
        assert not storage.is_transient(exc)
        denied = storage.access_denied(exc, "list s3://b/p")
        assert isinstance(denied, storage.StorageAccessDenied) and isinstance(denied, PermissionError)
        msg = str(denied)
        assert code in msg and "s3://b/p" in msg and "bucket 'b'" in msg and "AWS_SECRET_ACCESS_KEY" in msg
        assert "sekrit-value" not in msg
    calls = {"n": 0}

    def refused():
        calls["n"] += 1
        raise pyarrow_text

    with pytest.raises(storage.StorageAccessDenied):
        storage.with_retries(refused, "list s3://b/p", attempts=5)
    assert calls["n"] == 1
    assert storage.access_denied(FileNotFoundError("nope"), "read s3://b/x") is None
    assert storage.access_denied(OSError("AWS Error SLOW_DOWN during PutObject: 503"), "write s3://b/x") is None
    # a random request id holding "503" does not make a final error look transient
    assert not storage.is_transient(OSError("AWS Error NO_SUCH_KEY during GetObject (Request ID: AB503CD)"))


def test_folders_round_trip_through_s3_and_temporary_copies_are_removed(s3_bucket, tmp_path):
    src = tmp_path / "ckpt"
    for rel, data in {"dit/model.safetensors": b"w" * 5000, "dit/config.json": b"{}", "meta.json": b"{\"step\": 4}",
                      "deepspeed/state/optim.pt": b"o" * 100}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    uri = f"{s3_bucket}/run/checkpoint_00000004"
    assert storage.upload_dir(str(src), uri) == ["deepspeed/state/optim.pt", "dit/config.json",
                                                 "dit/model.safetensors", "meta.json"]
    with storage.local_copy(uri, only=("dit", "meta.json")) as local:
        got = sorted(str(p.relative_to(local)) for p in Path(local).rglob("*") if p.is_file())
        assert got == ["dit/config.json", "dit/model.safetensors", "meta.json"]  # no optimizer shards
        assert (Path(local) / "dit" / "model.safetensors").read_bytes() == b"w" * 5000
    assert not os.path.exists(local)  # the temporary copy is gone
    with storage.local_copy(str(src)) as same:
        assert same == str(src)  # a local folder is used in place
    with pytest.raises(FileNotFoundError, match="no files under"):
        with storage.local_copy(f"{s3_bucket}/nothing-here"):
            pass
    with storage.staged_dir(f"{s3_bucket}/out") as staged:
        (Path(staged) / "a.mp4").write_bytes(b"mp4")
        assert not storage.exists(f"{s3_bucket}/out/a.mp4")  # uploaded when the block ends
    assert storage.read_bytes(f"{s3_bucket}/out/a.mp4") == b"mp4" and not os.path.exists(staged)
