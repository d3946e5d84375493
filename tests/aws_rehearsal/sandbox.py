"""Rehearsal only: run a process with SageMaker's container paths, without touching this machine's own.

The SageMaker SDK's training drivers and the inference toolkit hard-code their paths (``/opt/ml/...``,
``/etc/sagemaker-ts.properties``), and a two-instance job resolves ``algo-1`` and ``algo-2``. Each rehearsed
container gets its own mount namespace (``unshare --mount``; as a user without root, inside a user namespace
that maps them to root) where

- ``/opt`` and ``/etc`` are copy-on-write overlays whose writes land in the container's scratch folder,
- ``/opt/ml`` is the container's own ``ml`` folder there (empty at start, as on SageMaker),
- ``/etc/hosts`` names the job's hosts, all on 127.0.0.1 (the instances share this machine's network), and the
  container's host name is its own (``algo-1``, ...) in a UTS namespace, as in a SageMaker job.

Nothing outside the scratch folder is written, so several containers run side by side. Linux only.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Sequence

SETUP = """set -e
mount -t overlay overlay -o lowerdir=/opt,upperdir={root}/opt-upper,workdir={root}/opt-work /opt
mount -t overlay overlay -o lowerdir=/etc,upperdir={root}/etc-upper,workdir={root}/etc-work /etc
mkdir -p /opt/ml
mount --bind {root}/ml /opt/ml
printf '127.0.0.1 localhost {hosts}\\n::1 localhost\\n' > /etc/hosts
hostname {hostname}
exec "$@"
"""


def container_command(argv: Sequence[str], root: str | os.PathLike, hosts: Sequence[str] = (),
                      hostname: str = "localhost") -> list[str]:
    """``argv`` run as in a container named ``hostname`` whose ``/opt/ml`` is ``root/ml`` (created here)."""
    if shutil.which("unshare") is None:
        raise RuntimeError("the rehearsal needs util-linux's `unshare` (Linux) to give each container its /opt/ml")
    root = Path(root).resolve()
    for name in ("ml", "opt-upper", "opt-work", "etc-upper", "etc-work"):
        (root / name).mkdir(parents=True, exist_ok=True)
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    script = SETUP.format(root=shlex.quote(str(root)), hosts=" ".join(hosts), hostname=shlex.quote(hostname))
    return ["unshare", *user, "--mount", "--uts", "--propagation", "private", "bash", "-c", script, "container", *argv]
