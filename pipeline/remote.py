"""Local copies of model files that live on a Beam filesystem (gs://, s3://, hdfs://), for workers on
Dataflow / Spark / Flink: scorers and language detectors load only local paths."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from apache_beam.io.filesystems import FileSystems


def local_copy(path: str) -> str:
    """`path` itself when local; else a copy in the temp directory, made once per machine (written to
    a `.part` file and renamed, so a concurrent reader never sees half a model)."""
    if "://" not in path:
        return path
    digest = hashlib.sha1(path.encode()).hexdigest()[:16]
    local = Path(tempfile.gettempdir()) / f"datamixer-{digest}-{Path(path).name}"
    if not local.exists():
        part = f"{local}.{os.getpid()}.part"
        with FileSystems.open(path) as src, open(part, "wb") as dst:
            dst.write(src.read())
        os.replace(part, local)
    return str(local)
