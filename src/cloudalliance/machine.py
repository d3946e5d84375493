"""What machine a record was measured on, found locally and quickly (no network call, ever).

Every :class:`~cloudalliance.records.Record` carries :func:`machine_block` so that runs made on several
machines (a PC, ml.m5.xlarge, ml.c5.4xlarge, ... as in the original study) can be put side by side by
``cloudalliance bench compare``. The block is computed once per process and cached.

Where the instance type comes from, without the instance-metadata service:

* EC2 (Nitro): the DMI product name is the instance type, e.g. ``m5.xlarge``, and the board/system vendor is
  ``Amazon EC2``. systemd relies on the same file to tell EC2 metal instances apart
  (https://github.com/systemd/systemd/commit/f90eea7d18d9ebe88e6a66cd7a86b618def8945d, "falling back to using
  the instance type from DMI"). Older Xen instances say ``HVM domU``: no type, "unknown".
* A SageMaker notebook instance has ``/opt/ml/metadata/resource-metadata.json`` whose ``ResourceName`` is the
  notebook instance's name (the SageMaker SDK reads it the same way:
  .venv/lib/python3.11/site-packages/sagemaker/core/helper/session_helper.py lines 84 and 316-320). Its type is
  the EC2 type of the host with the ``ml.`` prefix; :func:`notebook_instance_type` asks DescribeNotebookInstance
  for it on the aws backend when a caller wants the authoritative answer.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

UNKNOWN = "unknown"
DMI_DIR = Path("/sys/devices/virtual/dmi/id")
SAGEMAKER_METADATA = Path("/opt/ml/metadata/resource-metadata.json")
CPUINFO = Path("/proc/cpuinfo")
LIBRARIES = ("torch", "torchvision", "onnxruntime", "boto3", "sagemaker", "cloudalliance")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return ""


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask: what taskset or a container quota leaves it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu(cpuinfo: Path = CPUINFO) -> dict[str, Any]:
    text = _read(cpuinfo)
    model = ""
    cores: set[tuple[str, str]] = set()
    physical_id = core_id = ""
    for line in text.splitlines() + [""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model", "Hardware") and not model:
            model = value
        elif key == "physical id":
            physical_id = value
        elif key == "core id":
            core_id = value
        elif not key:  # the blank line that ends one processor's paragraph
            if core_id:
                cores.add((physical_id, core_id))
            physical_id = core_id = ""
    return {
        "cpu_model": model or platform.processor() or UNKNOWN,
        "physical_cores": len(cores) or None,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
    }


def _memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _gpu() -> dict[str, Any] | None:
    """torch.cuda when torch is already imported (importing it here would cost seconds), else nvidia-smi."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                props = torch.cuda.get_device_properties(0)
                return {"name": props.name, "memory_bytes": int(props.total_memory),
                        "count": torch.cuda.device_count(), "source": "torch.cuda"}
            return None
        except Exception:  # a broken CUDA install must not stop a record
            return None
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]
    if not rows:
        return None
    name, mib = rows[0][0], rows[0][-1]
    return {"name": name, "memory_bytes": int(float(mib) * 2**20) if mib.replace(".", "").isdigit() else None,
            "count": len(rows), "source": "nvidia-smi"}


def _os() -> dict[str, Any]:
    pretty = ""
    for line in _read(Path("/etc/os-release")).splitlines():
        if line.startswith("PRETTY_NAME="):
            pretty = line.split("=", 1)[1].strip().strip('"')
    return {"system": platform.system(), "kernel": platform.release(), "distribution": pretty or platform.platform(),
            "arch": platform.machine()}


def _libraries() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            found[name] = _metadata.version(name)
        except _metadata.PackageNotFoundError:
            found[name] = None
    return found


def instance_info(dmi_dir: Path | None = None, sagemaker_metadata: Path | None = None) -> dict[str, Any]:
    """``{"type", "source", "notebook_instance"}`` from local files only; ``type`` is "unknown" when untold."""
    dmi_dir = DMI_DIR if dmi_dir is None else dmi_dir
    sagemaker_metadata = SAGEMAKER_METADATA if sagemaker_metadata is None else sagemaker_metadata
    info: dict[str, Any] = {"type": UNKNOWN, "source": "", "notebook_instance": ""}
    vendors = {_read(dmi_dir / "board_vendor"), _read(dmi_dir / "sys_vendor")}
    product = _read(dmi_dir / "product_name")
    if "Amazon EC2" in vendors and product and " " not in product:
        info.update(type=product, source="dmi")
    if sagemaker_metadata.is_file():
        try:
            meta = json.loads(sagemaker_metadata.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        info["notebook_instance"] = str(meta.get("ResourceName") or "")
        if info["type"] != UNKNOWN and not info["type"].startswith("ml."):
            info.update(type=f"ml.{info['type']}", source="dmi+sagemaker-metadata")
    return info


def notebook_instance_type(sagemaker_client, name: str) -> str:
    """The notebook instance's type from DescribeNotebookInstance (aws backend only; one API call)."""
    return str(sagemaker_client.describe_notebook_instance(NotebookInstanceName=name).get("InstanceType") or UNKNOWN)


@functools.lru_cache(maxsize=1)
def _cached_block() -> dict[str, Any]:
    return {
        **_cpu(),
        "memory_bytes": _memory_bytes(),
        "gpu": _gpu(),
        "os": _os(),
        "python": platform.python_version(),
        "libraries": _libraries(),
        "instance": instance_info(),
        "host": platform.node(),
    }


def machine_block() -> dict[str, Any]:
    """This machine, computed once per process (a copy: callers may change theirs)."""
    block = copy.deepcopy(_cached_block())
    block["usable_cores"] = usable_cores()  # the affinity can change within a process; it is cheap to ask
    return block


def clear_cache() -> None:
    _cached_block.cache_clear()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (runnable tasks), or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


_STARTS: dict[str, list[float] | None] = {}


def mark_start(stage: str) -> list[float] | None:
    """Note the load average as a stage starts; the stage's next Record takes it as ``load.start``."""
    _STARTS[stage] = load_average()
    return _STARTS[stage]


def take_start(stage: str) -> list[float] | None:
    return _STARTS.pop(stage, None)


def contended(block: dict[str, Any] | None, load: dict[str, Any] | None) -> bool:
    """More runnable tasks than CPUs at the start or the end (1-minute load average above the logical cores):
    the run shared its CPUs with something else and its times are longer than the machine's."""
    if not block or not load:
        return False
    cores = block.get("logical_cores") or 0
    if not cores:
        return False
    return any(isinstance(v, list) and v and v[0] > cores for v in (load.get("start"), load.get("end")))


def label(block: dict[str, Any] | None, host: str = "") -> str:
    """Instance type, else CPU model and cores, else host."""
    block = block or {}
    itype = (block.get("instance") or {}).get("type") or UNKNOWN
    if itype != UNKNOWN:
        return itype
    model = block.get("cpu_model") or UNKNOWN
    if model != UNKNOWN:
        cores = block.get("usable_cores") or block.get("logical_cores")
        short = " ".join(model.replace("(R)", "").replace("(TM)", "").replace(" CPU", "").split())
        return f"{short} ×{cores}" if cores else short
    return block.get("host") or host or UNKNOWN
