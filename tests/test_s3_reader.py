"""tiers/s3_reader.py, the SDK-free S3 reader: its signature is botocore's, its requests
are addressed as botocore's, moto_server (with signature checking on) and the nginx
stand-in answer it, and tiers/remote.py uses it only when the environment holds the
whole configuration, without importing botocore."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import threading
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.services import BIN, _start, _stop, free_port
from tiers import remote
from tiers.errors import ObjectNotFound, SourceUnavailable, TransientError
from tiers.s3_reader import Credentials, S3Reader, amz_date, from_environment, sign

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["dir/a b.gguf", "ünï/çødé.gguf", "a+b~c=d.gguf", "q!'()*@:&$,;.gguf"]
DATA = os.urandom(200_000)
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDE+token/with+odd=chars"


# -- the signature and the addressing are botocore's -----------------------------------------

@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("method,extra", [("GET", {"Range": "bytes=100-199"}), ("GET", {}),
                                          ("HEAD", {})])
@pytest.mark.parametrize("region,endpoint", [("eu-west-3", None),
                                             ("us-east-1", "http://127.0.0.1:9000")])
def test_signature_is_botocores(monkeypatch, token, key, method, extra, region, endpoint):
    import botocore.auth
    import botocore.credentials
    from botocore.awsrequest import AWSRequest

    now = 1764626400.0
    creds = Credentials("AKIDEXAMPLE", SECRET, token)
    scheme, host, path = S3Reader(creds, region, endpoint).url("my-bucket", key)
    mine = sign(method, host, path, extra, creds, region, amz_date(now))

    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).replace(tzinfo=None)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: moment)
    request = AWSRequest(method=method, url=f"{scheme}://{host}{path}", headers=dict(extra))
    botocore.auth.S3SigV4Auth(botocore.credentials.Credentials("AKIDEXAMPLE", SECRET, token),
                              "s3", region).add_auth(request)
    theirs = {k.lower(): v for k, v in request.headers.items()}
    assert {k.lower(): v for k, v in mine.items()} == theirs
    assert ("x-amz-security-token" in theirs) == (token is not None)


@pytest.mark.parametrize("bucket,region,endpoint", [
    ("my-bucket", "eu-west-3", None),              # virtual-hosted on AWS
    ("my.dotted.bucket", "us-west-2", None),       # no TLS wildcard for dots: path style
    ("my-bucket", "us-east-1", "http://127.0.0.1:9000"),   # custom endpoint: path style
])
def test_addressing_is_botocores(monkeypatch, bucket, region, endpoint):
    import botocore.session

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    client = botocore.session.get_session().create_client(
        "s3", region_name=region, endpoint_url=endpoint, aws_access_key_id="a",
        aws_secret_access_key="b")
    sent: list[str] = []

    class Sent(Exception):
        pass

    def capture(request: Any, **_: Any) -> None:
        sent.append(request.url)
        raise Sent

    client.meta.events.register("before-send.s3", capture)
    reader = S3Reader(Credentials("a", "b"), region, endpoint)
    for key in KEYS:
        with pytest.raises(Sent):
            client.get_object(Bucket=bucket, Key=key)
        scheme, host, path = reader.url(bucket, key)
        assert sent[-1] == f"{scheme}://{host}{path}"


# -- moto_server with IAM and signature checks on -----------------------------------------------

_POLICY = {"Version": "2012-10-17",
           "Statement": [{"Effect": "Allow", "Action": ["s3:*", "sts:*"], "Resource": "*"}]}
_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}


@pytest.fixture(scope="module")
def checked_moto() -> Iterator[dict[str, Any]]:
    """A moto_server of its own that checks every request's signature and permissions
    after the first seven (the IAM set-up below): a user who may read, one who may
    not, and a role whose temporary credentials carry a session token."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = _start([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port,
                  "moto_server", env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "7"})
    try:
        root = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        iam = boto3.client("iam", aws_access_key_id="x", aws_secret_access_key="x", **root)
        iam.create_user(UserName="reader")
        iam.put_user_policy(UserName="reader", PolicyName="s3",
                            PolicyDocument=json.dumps(_POLICY))
        reader = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.create_user(UserName="nobody")
        nobody = iam.create_access_key(UserName="nobody")["AccessKey"]
        role = iam.create_role(RoleName="loader",
                               AssumeRolePolicyDocument=json.dumps(_TRUST))["Role"]["Arn"]
        iam.put_role_policy(RoleName="loader", PolicyName="s3",
                            PolicyDocument=json.dumps(_POLICY))
        keys = {"aws_access_key_id": reader["AccessKeyId"],
                "aws_secret_access_key": reader["SecretAccessKey"]}
        s3 = boto3.client("s3", **keys, **root)
        s3.create_bucket(Bucket="bkt")
        for key in KEYS:
            s3.put_object(Bucket="bkt", Key=key, Body=DATA)
        temporary = boto3.client("sts", **keys, **root).assume_role(
            RoleArn=role, RoleSessionName="strato")["Credentials"]
        yield {"endpoint": endpoint,
               "reader": Credentials(reader["AccessKeyId"], reader["SecretAccessKey"]),
               "nobody": Credentials(nobody["AccessKeyId"], nobody["SecretAccessKey"]),
               "temporary": Credentials(temporary["AccessKeyId"],
                                        temporary["SecretAccessKey"],
                                        temporary["SessionToken"])}
    finally:
        _stop(proc)


@pytest.mark.parametrize("who", ["reader", "temporary"])
def test_moto_checks_the_signature_and_answers(checked_moto, who):
    reader = S3Reader(checked_moto[who], "us-east-1", checked_moto["endpoint"])
    for key in KEYS:
        head = reader.head("bkt", key)
        assert head.size == len(DATA) and head.etag and '"' not in head.etag
        assert reader.get("bkt", key, (1000, 5000)) == DATA[1000:5000]
        assert reader.get("bkt", key) == DATA
    assert reader.get("bkt", KEYS[0], (len(DATA) - 7, len(DATA) + 50)) == DATA[-7:]
    assert reader.get("bkt", KEYS[0], (len(DATA), len(DATA) + 50)) == b""
    with pytest.raises(ObjectNotFound):
        reader.head("bkt", "absent.gguf")
    with pytest.raises(ObjectNotFound):
        reader.get("bkt", "absent.gguf", (0, 10))


@pytest.mark.parametrize("who", ["nobody", "wrong secret", "wrong token"])
def test_denied_is_source_unavailable_and_not_retried(checked_moto, who):
    creds = {"nobody": checked_moto["nobody"],
             "wrong secret": Credentials(checked_moto["reader"].access_key, SECRET),
             "wrong token": Credentials(checked_moto["temporary"].access_key,
                                        checked_moto["temporary"].secret_key, TOKEN)}[who]
    reader = S3Reader(creds, "us-east-1", checked_moto["endpoint"])
    for call in (lambda: reader.head("bkt", KEYS[0]),
                 lambda: reader.get("bkt", KEYS[0], (0, 10))):
        with pytest.raises(SourceUnavailable) as info:
            call()
        assert not isinstance(info.value, TransientError)


class _RegionGate(BaseHTTPRequestHandler):
    """S3's answer to a request signed for the wrong region (301 PermanentRedirect with
    x-amz-bucket-region), in front of moto; requests signed for `home` pass through."""

    home = "eu-west-1"
    upstream = ""
    redirected = 0

    def _serve(self) -> None:
        scope = self.headers["Authorization"].split("Credential=")[1].split("/")
        if scope[2] != self.home:
            type(self).redirected += 1
            body = b"" if self.command == "HEAD" else (
                b"<Error><Code>PermanentRedirect</Code></Error>")
            self.send_response(301)
            self.send_header("x-amz-bucket-region", self.home)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        conn = HTTPConnection(self.upstream.split("//")[1])
        conn.request(self.command, self.path, headers=dict(self.headers))
        answer = conn.getresponse()
        body = answer.read()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "server", "date"):
                self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        conn.close()

    do_GET = do_HEAD = _serve

    def log_message(self, *args: Any) -> None:
        pass


def test_wrong_region_is_asked_again_in_the_region_s3_names(checked_moto):
    _RegionGate.upstream, _RegionGate.redirected = checked_moto["endpoint"], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RegionGate)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        reader = S3Reader(checked_moto["reader"], "us-east-1",
                          f"http://127.0.0.1:{server.server_address[1]}")
        assert reader.head("bkt", KEYS[1]).size == len(DATA)   # signed again, moto checks
        assert reader.get("bkt", KEYS[1], (3, 9)) == DATA[3:9]
        assert _RegionGate.redirected == 1                     # the region is remembered
    finally:
        server.shutdown()
        server.server_close()


# -- the nginx stand-in --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Iterator[Any]:
    sys.path.insert(0, str(ROOT / "bench"))
    from s3_standin import S3StandIn

    root = tmp_path_factory.mktemp("store")
    (root / "bkt" / "dir").mkdir(parents=True)
    (root / "bkt" / "dir" / "obj").write_bytes(DATA)
    with S3StandIn(root, rate_mb=0) as s3:
        yield s3


def test_standin_answers_it(standin):
    reader = from_environment({**standin.env(), "AWS_CONFIG_FILE": "/nonexistent"})
    assert reader is not None
    assert reader.head("bkt", "dir/obj").size == len(DATA)
    assert reader.get("bkt", "dir/obj", (5, 70_005)) == DATA[5:70_005]
    assert reader.get("bkt", "dir/obj", (len(DATA) - 3, len(DATA) + 3)) == DATA[-3:]
    assert reader.get("bkt", "dir/obj") == DATA
    with pytest.raises(ObjectNotFound):
        reader.get("bkt", "dir/absent", (0, 10))


def test_a_read_imports_no_sdk(standin):
    """A cold process that reads through tiers/remote.py with the environment's
    credentials never imports botocore (the point of the reader)."""
    code = ("import sys; from tiers import remote; "
            "data = remote.read_range('s3://bkt/dir/obj', 0, 4096); "
            "size = remote.info('s3://bkt/dir/obj').size; "
            "print(len(data), size, sorted(m for m in ('botocore', 'boto3', 's3fs') "
            "if m in sys.modules))")
    env = {**os.environ, **standin.env(), "PYTHONPATH": str(ROOT),
           "AWS_CONFIG_FILE": "/nonexistent"}
    env.pop("AWS_PROFILE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["4096", str(len(DATA)), "[]"]


# -- when tiers/remote.py uses it ---------------------------------------------------------------

def test_only_a_complete_environment_configures_it(tmp_path):
    keys = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b",
            "AWS_CONFIG_FILE": str(tmp_path / "absent")}
    reader = from_environment({**keys, "AWS_SESSION_TOKEN": "t", "AWS_REGION": "eu-west-3",
                               "AWS_DEFAULT_REGION": "us-west-2"})
    assert reader is not None and reader.region == "eu-west-3"
    assert reader.credentials.token == "t" and reader.endpoint is None
    assert from_environment(keys).region == "us-east-1"                
    assert from_environment({**keys, "AWS_ENDPOINT_URL": "http://a:1",
                             "AWS_ENDPOINT_URL_S3": "http://b:2/"}).endpoint == "http://b:2"
    (tmp_path / "config").write_text("[default]\nregion = eu-west-1\n")
    for without in ({k: v for k, v in keys.items() if k != "AWS_SECRET_ACCESS_KEY"},
                    {**keys, "AWS_PROFILE": "dev"},
                    {**keys, "AWS_USE_FIPS_ENDPOINT": "true"},
                    {**keys, "AWS_CONFIG_FILE": str(tmp_path / "config")}):
        assert from_environment(without) is None


def test_without_environment_keys_botocore_reads(s3_bucket, monkeypatch, tmp_path):
    """Credentials from a shared credentials file (as from a profile, SSO or instance
    metadata): the reader steps aside and botocore reads, as before."""
    import boto3

    bucket = s3_bucket.split("://")[1]
    boto3.client("s3").put_object(Bucket=bucket, Key="m/blob", Body=DATA)
    (tmp_path / "credentials").write_text(
        "[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    assert remote._s3_reader() is None
    url = f"{s3_bucket}/m/blob"
    assert remote.read_range(url, 10, 20) == DATA[10:20]
    assert remote.info(url).size == len(DATA)
    assert any(k[0] == "s3-botocore" for k in remote._cache)


def test_with_environment_keys_remote_reads_through_it(s3_bucket, monkeypatch, tmp_path):
    import boto3

    bucket = s3_bucket.split("://")[1]
    boto3.client("s3").put_object(Bucket=bucket, Key="m/blob", Body=DATA)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    assert isinstance(remote._s3_reader(), S3Reader)
    url = f"{s3_bucket}/m/blob"
    assert remote.read_range(url, 10, 20) == DATA[10:20]
    assert remote.read_bytes(url) == DATA
    assert remote.info(url).size == len(DATA)
    with pytest.raises(ObjectNotFound):
        remote.read_bytes(f"{s3_bucket}/m/absent.json")


class _NoLength(BaseHTTPRequestHandler):
    """Ranged GETs answered without Content-Length (the body ends when the connection
    closes), as some S3-compatible stores and proxies answer; `extra` bytes more than
    asked for play a store that ignored the Range."""

    extra = 0
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        first, last = (int(n) for n in self.headers["Range"].split("=")[1].split("-"))
        self.send_response(206)
        self.end_headers()
        self.wfile.write(DATA[first:last + 1 + self.extra])

    def log_message(self, *args: Any) -> None:
        pass


def test_a_body_without_length_lands_in_the_buffer_or_is_refused_when_too_long():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoLength)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reader = S3Reader(Credentials("AKIDEXAMPLE", SECRET, None), "us-east-1",
                          f"http://127.0.0.1:{server.server_address[1]}")
        buffer = memoryview(bytearray(64))
        got = reader.get("bkt", "k.gguf", (10, 50), into=buffer)
        assert bytes(got) == DATA[10:50] and got.obj is buffer.obj   # in place, filled part
        assert bytes(buffer[:40]) == DATA[10:50]
        _NoLength.extra = 100
        with pytest.raises(SourceUnavailable, match=r"s3://bkt/k.gguf: 140 bytes answered "
                                                    r"for a read of 64"):
            reader.get("bkt", "k.gguf", (10, 50), into=memoryview(bytearray(64)))
    finally:
        _NoLength.extra = 0
        server.shutdown()
        server.server_close()
