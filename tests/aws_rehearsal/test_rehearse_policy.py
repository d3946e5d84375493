"""The rehearsal's IAM check (rehearse.py): every AWS call it saw maps to the IAM action that allows it, and an
action the shipped policy lacks fails the rehearsal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rehearse

REPO = Path(__file__).resolve().parents[2]


def test_proxy_and_client_calls_map_to_iam_actions():
    proxy = ["SageMaker.CreateTrainingJob", "ServiceQuotasV20190624.ListServiceQuotas", "iam.SimulatePrincipalPolicy",
             "POST /", "GET /", "POST /endpoints/cloudalliance/invocations", "HEAD /course", "GET /course",
             "PUT /course", "POST /course", "GET /course/intel/a.jpg", "HEAD /course/intel/a.jpg",
             "PUT /course/intel/a.jpg", "POST /course/models/r/model.tar.gz", "DELETE /course/intel/a.jpg"]
    client = ["sts:GetCallerIdentity", "cloudformation:DescribeStacks", "s3:GetBucketLocation",
              "s3:GetBucketEncryption", "s3:ListObjectsV2", "s3:HeadObject", "s3:CreateMultipartUpload"]
    assert sorted(rehearse.iam_actions(proxy, client)) == sorted([
        "sagemaker:CreateTrainingJob", "servicequotas:ListServiceQuotas", "iam:SimulatePrincipalPolicy",
        "s3:ListAllMyBuckets", "sagemaker:InvokeEndpoint", "s3:ListBucket", "s3:CreateBucket", "s3:DeleteObject",
        "s3:GetObject", "s3:PutObject", "sts:GetCallerIdentity", "cloudformation:DescribeStacks",
        "s3:GetBucketLocation", "s3:GetEncryptionConfiguration"])


def test_an_action_the_policy_lacks_is_named_with_the_call_that_needed_it(tmp_path):
    policy = json.loads(rehearse.POLICY.read_text())
    for statement in policy["Statement"]:
        statement["Action"] = [a for a in statement["Action"] if a != "s3:GetBucketLocation"]
    lacking = tmp_path / "policy.json"
    lacking.write_text(json.dumps(policy))
    calls = ["s3:GetBucketLocation", "sagemaker:CreateTrainingJob"]
    assert rehearse.check_policy(["SageMaker.createtrainingjob"], calls) == []  # IAM ignores the case of actions
    assert rehearse.check_policy([], calls, lacking) == ["s3:GetBucketLocation (e.g. s3:GetBucketLocation)"]


def test_the_readme_gives_the_policy_and_aws_would_take_it():
    """A managed policy may hold 6,144 characters, white space not counted (IAM quotas,
    https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html)."""
    text = rehearse.POLICY.read_text()
    policy = json.loads(text)
    assert policy["Version"] == "2012-10-17" and all(st["Effect"] == "Allow" for st in policy["Statement"])
    assert len("".join(text.split())) <= 6144
    assert "--policy-document file://iam/cloudalliance-course-policy.json" in (REPO / "README.md").read_text()
