"""``download_prefix``: every object under a prefix into a folder (what SageMaker's File input mode does)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import time
from pathlib import Path
from typing import Any

from .checksums import etags_are_md5, remote_md5s
from .client import explain, list_objects
from .errors import StorageError
from .location import S3Location
from .manifest import MANIFEST_NAME, md5_file
from .progress import _progress


def download_prefix(client, location: S3Location, dest: str | os.PathLike, workers: int = 16,
                    progress: bool = True) -> dict[str, Any]:
    """Copy every object under the prefix into ``dest`` (what SageMaker's File input mode does).

    Files already there with the same size and MD5 are kept, so a rerun only
    fetches what is missing. Returns counts and seconds.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    dest = Path(dest)
    t0 = time.perf_counter()
    objects = list_objects(client, location)
    if not objects:
        raise StorageError(f"{location.uri} holds no objects; upload the data first (notebook 02 or "
                           "`cloudalliance s3 upload`)")
    prefix = f"{location.prefix}/" if location.prefix else ""
    todo = []
    present = [k for k, (size, _) in objects.items() if (dest / k[len(prefix):]).is_file()
               and (dest / k[len(prefix):]).stat().st_size == size]
    remote = remote_md5s(client, location, objects, present, etags_are_md5(client, location.bucket)) if present else {}
    for key in objects:
        relative = key[len(prefix):]
        if relative == MANIFEST_NAME:
            continue
        target = dest / relative
        if key in remote and md5_file(target) == remote[key][1]:
            continue
        todo.append((key, target))

    def get(item: tuple[str, Path]) -> int:
        key, target = item
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            body = client.get_object(Bucket=location.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise explain(exc, key) from exc
        tmp = target.with_name(f".{target.name}.part")
        tmp.write_bytes(body)
        os.replace(tmp, target)
        return len(body)

    fetched = 0
    with _progress(len(objects), f"download {location.uri}", enabled=progress) as bar:
        bar.update(len(objects) - len(todo))
        with cf.ThreadPoolExecutor(max_workers=workers) as pool:
            for n in pool.map(get, todo):
                fetched += n
                bar.update(1)
    return {"objects": len(objects), "downloaded": len(todo), "skipped": len(objects) - len(todo),
            "bytes": fetched, "seconds": time.perf_counter() - t0}
