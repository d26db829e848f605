"""S3-compatible object storage: the few reads and writes a packed set needs, through boto3.

Endpoint and credentials come from the standard variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, or a profile), which boto3 and DALI's S3 client both
read, so one environment serves the packer, the trainer and DALI. No message here ever holds a
credential: errors name the object, the endpoint and what to check.

Every request has a bounded time (connect and read timeouts, a few retries): a store that stops
answering ends in an error, not a hang. Torch-free and DALI-free; boto3 is imported on first use.
"""
from __future__ import annotations

import ipaddress
import os
import re

from .layout_error import LayoutError

SCHEME = "s3://"
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 20
ATTEMPTS = 3   # total tries of a request (botocore "standard" retries back off between them)
_clients: dict[int, object] = {}  # per process: a boto3 client must not cross a fork


class ObjStoreError(LayoutError):
    """An object that cannot be read or written; the message says which and why."""


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", re.ASCII)


def is_remote(path) -> bool:
    """Whether `path` is an object-storage address (the one test of it: layout and readers use this)."""
    return str(path).startswith(SCHEME)


def bucket_name_problem(name: str) -> str | None:
    """Why `name` cannot be an S3 bucket (the naming rules AWS and S3-compatible stores enforce), or None."""
    if not 3 <= len(name) <= 63:
        return f"is {len(name)} characters long; a bucket name has 3 to 63"
    if not _BUCKET.fullmatch(name):
        return ("may hold only lowercase letters, digits, dots and hyphens, and must start and end with a letter "
                "or a digit")
    if ".." in name:
        return "has two dots in a row"
    try:
        ipaddress.IPv4Address(name)
        return "is written like an IP address"
    except ValueError:
        return None


def split(url: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key); ObjStoreError for an address whose bucket cannot exist."""
    bucket, _, key = str(url)[len(SCHEME):].partition("/")
    if not bucket:
        raise ObjStoreError(f"{url}: not an s3://bucket/prefix address")
    problem = bucket_name_problem(bucket)
    if problem:
        raise ObjStoreError(f"{url}: {bucket!r} cannot be an S3 bucket name: it {problem}; check the address")
    return bucket, key


def join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel.lstrip("/")


def endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or "the default AWS endpoint"


def client():
    pid = os.getpid()
    if pid not in _clients:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ObjStoreError("s3:// sets need boto3: pip install boto3") from None
        config = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                        retries={"max_attempts": ATTEMPTS, "mode": "standard"})
        _clients[pid] = boto3.session.Session().client("s3", config=config)
    return _clients[pid]


def _error(url: str, exc: Exception, what: str) -> ObjStoreError:
    """One line for a failed request: the object, what went wrong in words, what to check."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError
    from botocore.exceptions import ConnectTimeoutError as ConnectTimeout
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            return ObjStoreError(f"{url}: no such object")
        if code == "NoSuchBucket":
            return ObjStoreError(f"{url}: bucket {split(url)[0]} does not exist at {endpoint()}")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "403",
                    "AccessDenied", "InvalidClientTokenId"):
            return ObjStoreError(f"{url}: the object store refused the credentials ({code}); check AWS_ACCESS_KEY_ID "
                                 f"and AWS_SECRET_ACCESS_KEY for {endpoint()}")
        return ObjStoreError(f"{url}: {what} failed ({code or 'error'}: {exc.response.get('Error', {}).get('Message', '')})")
    if isinstance(exc, NoCredentialsError):
        return ObjStoreError(f"{url}: no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, EndpointConnectionError | ConnectTimeout):
        return ObjStoreError(f"{url}: cannot reach the object store at {endpoint()} (tried {ATTEMPTS} times, "
                             f"{CONNECT_TIMEOUT_S} s each); check AWS_ENDPOINT_URL and the network")
    if isinstance(exc, ReadTimeoutError):
        return ObjStoreError(f"{url}: the object store at {endpoint()} stopped answering ({READ_TIMEOUT_S} s without "
                             f"data, {ATTEMPTS} tries)")
    return ObjStoreError(f"{url}: {what} failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")


def _call(url: str, what: str, fn, **kw):
    from botocore.exceptions import BotoCoreError, ClientError
    bucket, key = split(url)
    try:
        return fn(Bucket=bucket, Key=key, **kw)
    except (BotoCoreError, ClientError) as exc:
        raise _error(url, exc, what) from None


def size(url: str) -> int:
    return int(_call(url, "HEAD", client().head_object)["ContentLength"])


def exists(url: str) -> bool:
    try:
        size(url)
    except ObjStoreError as exc:
        if str(exc).endswith("no such object"):
            return False
        raise
    return True


def read(url: str, start: int | None = None, length: int | None = None) -> bytes:
    """The object's bytes, or `length` of them from `start`."""
    kw = {} if start is None else {"Range": f"bytes={start}-{'' if length is None else start + length - 1}"}
    body = _call(url, "GET", client().get_object, **kw)["Body"]
    from botocore.exceptions import BotoCoreError
    try:
        with body:
            return body.read()
    except (BotoCoreError, OSError) as exc:  # the connection broke or timed out mid-body
        raise _error(url, exc, "GET") from None


def upload(local: str | os.PathLike, url: str):
    """One PUT of a local file (shards are megabytes: no multipart upload needed)."""
    with open(local, "rb") as f:
        _call(url, "PUT", client().put_object, Body=f)


def delete(url: str):
    _call(url, "DELETE", client().delete_object)


def check_bucket(url: str):
    """Raises ObjStoreError unless the bucket of `url` exists and these credentials may use it."""
    from botocore.exceptions import BotoCoreError, ClientError
    bucket, _ = split(url)
    try:
        client().head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise ObjStoreError(f"s3://{bucket}: bucket does not exist at {endpoint()}; create it first") from None
        raise _error(url, exc, "HEAD bucket") from None
    except BotoCoreError as exc:
        raise _error(url, exc, "HEAD bucket") from None
