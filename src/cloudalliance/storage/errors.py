"""What goes wrong with S3 and what to do about it: :class:`StorageError`, the permanent error codes."""

from __future__ import annotations
from ..errors import CloudallianceError


# Errors that retrying cannot fix: stop and say what to do.
PERMANENT_ERRORS = {
    "NoSuchBucket": "the bucket does not exist; create it first (storage.ensure_bucket or `aws s3 mb`)",
    "AccessDenied": "access denied; check the credentials and the bucket policy",
    "InvalidAccessKeyId": "the access key is not known to this S3 server; check the credentials",
    "SignatureDoesNotMatch": "the secret key does not match; check the credentials",
    "InvalidBucketName": "the bucket name is not valid (3-63 lower-case letters, digits, '.', '-')",
    "AllAccessDisabled": "all access to this bucket is disabled",
}


class StorageError(CloudallianceError):
    """An S3 problem with a message that says what to do."""


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
