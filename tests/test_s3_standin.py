"""The benchmark's S3 stand-in (bench/s3_standin.py, nginx) speaks enough S3 for boto3,
s3fs and strato's loader: HEAD, ranged GET, a missing key, path-style addressing.
nginx comes from `make bench-deps` (a prerequisite of `make test`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from s3_standin import S3StandIn  # noqa: E402


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    (root / "bkt" / "dir").mkdir(parents=True)
    data = os.urandom(3 << 20)
    (root / "bkt" / "dir" / "obj").write_bytes(data)
    with S3StandIn(root, rate_mb=0) as s3:
        yield s3, data


def test_boto3_heads_and_reads_ranges(standin, monkeypatch):
    import boto3
    import botocore.exceptions

    s3, data = standin
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    client = boto3.client("s3")
    head = client.head_object(Bucket="bkt", Key="dir/obj")
    assert head["ContentLength"] == len(data) and head["ETag"]
    got = client.get_object(Bucket="bkt", Key="dir/obj", Range="bytes=1000-1999")
    assert got["Body"].read() == data[1000:2000]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.head_object(Bucket="bkt", Key="dir/missing")
    assert info.value.response["Error"]["Code"] in ("404", "NoSuchKey")


def test_s3fs_and_the_loader_read_through_it(standin, monkeypatch):
    from tiers import remote
    from tiers.errors import ObjectNotFound

    s3, data = standin
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    url = "s3://bkt/dir/obj"
    assert remote.info(url).size == len(data)
    assert remote.read_range(url, 5, 4096 + 5) == data[5:4096 + 5]
    assert remote.read_range(url, len(data) - 10, len(data) + 100) == data[-10:]
    with pytest.raises(ObjectNotFound):
        remote.read_range("s3://bkt/dir/missing", 0, 10)
