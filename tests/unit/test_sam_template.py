"""lambda/template.yaml: valid for cfn-lint, one route, a role that may only invoke one endpoint."""

import subprocess
import sys
from pathlib import Path

import yaml

TEMPLATE = Path(__file__).resolve().parents[2] / "lambda" / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    pass


for _tag in ("!Ref", "!Sub", "!GetAtt", "!Join", "!If", "!Equals", "!Select", "!Split"):
    _CfnLoader.add_constructor(_tag, lambda loader, node, tag=_tag: {tag: loader.construct_scalar(node)
                                                                     if isinstance(node, yaml.ScalarNode) else
                                                                     loader.construct_sequence(node)})


def test_cfn_lint_passes():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    proc = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_route_handler_and_least_privilege():
    doc = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    resources = doc["Resources"]
    fn = resources["PredictFunction"]["Properties"]
    assert fn["Handler"] == "handler.lambda_handler"
    assert (TEMPLATE.parent / "handler.py").is_file()
    event = fn["Events"]["Predict"]["Properties"]
    assert (fn["Events"]["Predict"]["Type"], event["Path"], event["Method"]) == ("HttpApi", "/predict", "POST")
    assert fn["Environment"]["Variables"]["ENDPOINT_NAME"] == {"!Ref": "EndpointName"}
    assert "ALLOWED_PRIVATE_HOSTS" not in fn["Environment"]["Variables"], "never allow private hosts on AWS"
    statements = [s for p in resources["PredictFunctionRole"]["Properties"]["Policies"]
                  for s in p["PolicyDocument"]["Statement"]]
    assert statements == [{
        "Effect": "Allow", "Action": "sagemaker:InvokeEndpoint",
        "Resource": {"!Sub": "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:endpoint/${EndpointName}"},
    }]
