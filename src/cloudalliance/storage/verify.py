"""``verify_upload``: is every local file in S3 with the right checksum? Names what is missing or different."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .checksums import etags_are_md5, remote_md5s
from .client import list_objects
from .location import S3Location
from .manifest import build_manifest, read_manifest


@dataclasses.dataclass
class VerifyResult:
    location: str
    mode: str
    files: int
    missing: list[str]
    different: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.different

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "ok": self.ok}


def verify_upload(src: str | os.PathLike, dest: str | S3Location, client) -> VerifyResult:
    """Is every file under ``src`` in S3 with the right checksum? Names what is missing or different.

    objects: each object's size and MD5 against the file.
    shards: each shard's size and MD5 against the manifest, and each file against the manifest.
    An object's MD5 is its ETag where that is one (single-part PUT, bucket not SSE-KMS), else the MD5 the
    upload kept in its metadata (:mod:`.checksums`); an object without either counts as different.
    """
    location = dest if isinstance(dest, S3Location) else S3Location.parse(dest)
    local = build_manifest(src)
    manifest = read_manifest(client, location)
    listing = list_objects(client, location)
    trust = etags_are_md5(client, location.bucket)
    missing: list[str] = []
    different: list[str] = []
    mode = manifest.get("mode", "objects")
    if mode == "shards":
        recorded = {e["path"]: (e["size"], e["md5"]) for e in manifest.get("entries", [])}
        members: dict[str, list[str]] = {}
        for e in manifest.get("entries", []):
            members.setdefault(e.get("shard", ""), []).append(e["path"])
        shards = manifest.get("shards", [])
        remote = remote_md5s(client, location, listing, [location.key(sh["name"]) for sh in shards], trust)
        for shard in shards:
            got = remote.get(location.key(shard["name"]))
            if got is None:
                missing += members.get(shard["name"], [shard["name"]])
            elif got != (shard["size"], shard["md5"]):
                different += members.get(shard["name"], [shard["name"]])
        bad = set(missing) | set(different)
        for e in local:
            if e.path in bad:
                continue
            if e.path not in recorded:
                missing.append(e.path)
            elif recorded[e.path] != (e.size, e.md5):
                different.append(e.path)
    else:
        same_size = [location.key(e.path) for e in local if listing.get(location.key(e.path), (-1,))[0] == e.size]
        remote = remote_md5s(client, location, listing, same_size, trust)
        for e in local:
            key = location.key(e.path)
            if key not in listing:
                missing.append(e.path)
            elif remote.get(key, listing[key]) != (e.size, e.md5):
                different.append(e.path)
    return VerifyResult(location.uri, mode, len(local), sorted(missing), sorted(different))
