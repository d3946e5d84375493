"""``s3://bucket/prefix`` locations."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, uri: str) -> "S3Location":
        if not isinstance(uri, str) or not uri.startswith("s3://"):
            raise ValueError(f"Not an S3 URI: {uri!r}; write it as s3://BUCKET/PREFIX")
        rest = uri[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ValueError(f"S3 URI {uri!r} names no bucket; write it as s3://BUCKET/PREFIX")
        return cls(bucket=bucket, prefix=prefix.strip("/"))

    def key(self, relative: str) -> str:
        relative = relative.lstrip("/")
        return f"{self.prefix}/{relative}" if self.prefix else relative

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def __str__(self) -> str:
        return self.uri
