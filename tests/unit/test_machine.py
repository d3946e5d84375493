"""The machine block: local files only, cached, and labels that tell machines apart."""

import json
import os
import subprocess
import sys
import time

import pytest

from cloudalliance import machine


def test_block_describes_this_process_quickly_and_once():
    machine.clear_cache()
    t0 = time.perf_counter()
    block = machine.machine_block()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = machine.machine_block()
    assert time.perf_counter() - t0 < first / 2 + 0.005, "the second call comes from the cache"
    assert first < 5
    assert block == again and block is not again
    assert block["logical_cores"] == os.cpu_count()
    assert block["usable_cores"] == len(os.sched_getaffinity(0))
    assert block["memory_bytes"] > 2**28
    assert block["os"]["kernel"] and block["python"].count(".") == 2
    assert set(block["libraries"]) >= {"torch", "onnxruntime", "boto3", "sagemaker"}
    assert block["instance"]["type"]  # "unknown" on a PC


def test_no_torch_import_for_the_gpu_question():
    code = ("import sys; from cloudalliance import machine; b = machine.machine_block(); "
            "print('torch' in sys.modules, b['gpu'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False"), "the block must not import torch (seconds)"


def test_a_restricted_process_reports_one_core():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to restrict to one")
    code = ("import os, json; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "from cloudalliance import machine; print(json.dumps(machine.machine_block()))")
    block = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
    assert block["usable_cores"] == 1 and block["logical_cores"] == os.cpu_count()
    assert machine.label(block) != machine.label(machine.machine_block())


def _dmi(tmp_path, vendor, product):
    d = tmp_path / "dmi"
    d.mkdir()
    (d / "board_vendor").write_text(vendor + "\n")
    (d / "product_name").write_text(product + "\n")
    return d


def test_instance_type_from_dmi_on_ec2(tmp_path):
    info = machine.instance_info(_dmi(tmp_path, "Amazon EC2", "c5.4xlarge"), tmp_path / "absent.json")
    assert info == {"type": "c5.4xlarge", "source": "dmi", "notebook_instance": ""}


def test_not_ec2_or_xen_era_is_unknown(tmp_path):
    assert machine.instance_info(_dmi(tmp_path, "Dell Inc.", "0X8DXD"), tmp_path / "no.json")["type"] == "unknown"
    (tmp_path / "dmi").rename(tmp_path / "old")
    assert machine.instance_info(_dmi(tmp_path, "Xen", "HVM domU"), tmp_path / "no.json")["type"] == "unknown"


def test_sagemaker_notebook_instance(tmp_path):
    meta = tmp_path / "resource-metadata.json"
    meta.write_text(json.dumps({"ResourceArn": "arn:aws:sagemaker:us-east-1:1:notebook-instance/study",
                                "ResourceName": "study"}))
    info = machine.instance_info(_dmi(tmp_path, "Amazon EC2", "m5.4xlarge"), meta)
    assert info == {"type": "ml.m5.4xlarge", "source": "dmi+sagemaker-metadata", "notebook_instance": "study"}
    assert machine.label({"instance": info, "cpu_model": "Intel Xeon"}) == "ml.m5.4xlarge"


def test_notebook_instance_type_asks_sagemaker(tmp_path):
    """DescribeNotebookInstance's InstanceType (botocore's Stubber: AWS itself is the only thing faked)."""
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_response("describe_notebook_instance", {"InstanceType": "ml.c5.4xlarge"},
                          {"NotebookInstanceName": "study"})
        assert machine.notebook_instance_type(client, "study") == "ml.c5.4xlarge"


def test_labels_fall_back_from_type_to_cpu_to_host():
    assert machine.label({"instance": {"type": "unknown"}, "cpu_model": "Intel(R) Core(TM) i7-8550U CPU @ 1.80GHz",
                          "usable_cores": 8}) == "Intel Core i7-8550U @ 1.80GHz ×8"
    assert machine.label({"cpu_model": "unknown", "host": "pc"}) == "pc"
    assert machine.label({}, host="laptop") == "laptop"


def test_contended_when_load_exceeds_cores():
    block = {"logical_cores": 2}
    assert machine.contended(block, {"start": [2.5, 1, 1], "end": [1.0, 1, 1]})
    assert not machine.contended(block, {"start": [0.3, 1, 1], "end": [1.9, 1, 1]})
    assert not machine.contended({}, {"end": [9, 9, 9]}), "unknown machine: no claim"


def test_gpu_from_nvidia_smi_when_torch_is_not_imported(tmp_path):
    """nvidia-smi's CSV query (--query-gpu=name,memory.total --format=csv,noheader,nounits: one line per GPU,
    memory in MiB); a stand-in script on PATH prints that format, so no GPU is needed to test the parsing."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf 'NVIDIA H100 80GB HBM3, 81559\\nNVIDIA H100 80GB HBM3, 81559\\n'\n")
    fake.chmod(0o755)
    code = "import json; from cloudalliance import machine; print(json.dumps(machine.machine_block()['gpu']))"
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    gpu = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                    env=env).stdout)
    assert gpu == {"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 81559 * 2**20, "count": 2,
                   "source": "nvidia-smi"}
    fake.write_text("#!/bin/sh\nexit 9\n")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=env).stdout.strip() == "null", "a failing nvidia-smi means no GPU, not an error"
