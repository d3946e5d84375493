"""Which checksum of an S3 object to compare with a local file's MD5.

An ETag is the MD5 of the object's bytes only for a single-part PUT (or POST, or copy) stored as
plaintext or under SSE-S3. Under SSE-C or SSE-KMS (a common bucket default), and for every multipart
upload ("<hex>-<parts>"), it is not: "Objects created by the PUT Object, POST Object, or Copy
operation [...] encrypted by SSE-C or SSE-KMS, have ETags that are not an MD5 digest of their object
data. If an object is created by either the Multipart Upload or Part Copy operation, the ETag is not
an MD5 digest, regardless of the method of encryption."
(S3 API reference, Object / ETag: https://docs.aws.amazon.com/AmazonS3/latest/API/API_Object.html;
"Checking object integrity": https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html)

So every upload also stores the MD5 in the object's own metadata (``x-amz-meta-md5``: boto3's
``Metadata={"md5": ...}``, s5cmd's ``cp --metadata md5=...``), and resume and verify use the ETag only
when it is a plain MD5 (32 hex digits, no ``-parts``) in a bucket whose default encryption is not
SSE-KMS/DSSE-KMS; otherwise they read the MD5 from the metadata with a HEAD (an object without it
counts as different, so it is sent again or reported).
"""

from __future__ import annotations

import concurrent.futures as cf
import re
from typing import Iterable

from .errors import error_code
from .location import S3Location

METADATA_KEY = "md5"  # sent as the x-amz-meta-md5 header; boto3 and S3 give it back lower-case
KMS_ALGORITHMS = ("aws:kms", "aws:kms:dsse")
_PLAIN_MD5 = re.compile(r"[0-9a-f]{32}")


def is_plain_md5(etag: str) -> bool:
    """32 lower-case hex digits: the shape of an MD5 (a multipart ETag has a ``-<parts>`` suffix)."""
    return bool(_PLAIN_MD5.fullmatch(etag.strip('"')))


def bucket_encryption(client, bucket: str) -> str:
    """The bucket's default server-side encryption (``AES256``, ``aws:kms``, ``aws:kms:dsse``) or "" when it
    has none, or the server does not say (SeaweedFS and older S3 clones answer NotImplemented)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        rules = client.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    except ClientError as exc:
        if error_code(exc) in ("AccessDenied",):
            return "unknown"  # cannot tell: treat ETags as untrusted
        return ""
    except BotoCoreError:
        return ""
    for rule in rules:
        algorithm = rule.get("ApplyServerSideEncryptionByDefault", {}).get("SSEAlgorithm", "")
        if algorithm:
            return algorithm
    return ""


def etags_are_md5(client, bucket: str) -> bool:
    """Can a plain-looking ETag in this bucket be taken as the MD5? Not under SSE-KMS/DSSE-KMS (or when
    the bucket's encryption cannot be read)."""
    return bucket_encryption(client, bucket) not in (*KMS_ALGORITHMS, "unknown")


def metadata_md5(client, bucket: str, key: str) -> str:
    """The MD5 an upload stored in the object's metadata, or "" when it has none (or is gone)."""
    from botocore.exceptions import ClientError

    try:
        meta = client.head_object(Bucket=bucket, Key=key).get("Metadata", {})
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return ""
        raise
    value = str(meta.get(METADATA_KEY, "")).lower()
    return value if is_plain_md5(value) else ""


def remote_md5s(client, location: S3Location, listing: dict[str, tuple[int, str]], wanted: Iterable[str],
                trust_etags: bool, workers: int = 16) -> dict[str, tuple[int, str]]:
    """``{key: (size, md5)}`` for the ``wanted`` keys that are in ``listing``: the ETag where it is a
    plain MD5 and ``trust_etags``, else the metadata MD5 read with a HEAD ("" when there is none)."""
    out: dict[str, tuple[int, str]] = {}
    heads: list[str] = []
    for key in wanted:
        if key not in listing:
            continue
        size, etag = listing[key]
        if trust_etags and is_plain_md5(etag):
            out[key] = (size, etag)
        else:
            heads.append(key)
    if heads:
        with cf.ThreadPoolExecutor(max_workers=workers) as pool:
            for key, md5 in zip(heads, pool.map(lambda k: metadata_md5(client, location.bucket, k), heads)):
                out[key] = (listing[key][0], md5)
    return out
