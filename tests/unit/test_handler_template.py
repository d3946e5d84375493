"""template.yaml and handler.py agree: a lower-case endpoint name (ARNs are lower case), and the handler's
safety margin fits inside the function's timeout, which stays under API Gateway's 30 s.

SageMaker: "The name is case-insensitive in CreateEndpoint, but the case is preserved and must be matched in
InvokeEndpoint" (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateEndpoint.html); the
endpoint's ARN, which the role's policy names, is lower case (e.g. philschmid/cdk-samples issue #2,
prometheus-community/yet-another-cloudwatch-exporter pull request #1178), and IAM compares it case-sensitively.
"""

import re
from pathlib import Path

import pytest
import yaml

from cloudalliance.local.gateway import load_handler

LAMBDA = Path(__file__).resolve().parents[2] / "lambda"


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


@pytest.fixture(scope="module")
def template():
    return yaml.load((LAMBDA / "template.yaml").read_text(), Loader=_Loader)


@pytest.mark.parametrize("name, ok", [
    ("cloudalliance", True), ("cloudalliance-endpoint-2", True), ("a", True), ("a" * 63, True),
    ("CloudAlliance", False), ("MY-ENDPOINT", False), ("-x", False), ("x-", False), ("a" * 64, False),
    ("under_score", False), ("", True),  # empty: only with InferenceMode=lambda (the template's Rules refuse it otherwise)
])
def test_endpoint_name_pattern_is_lower_case(template, name, ok):
    pattern = template["Parameters"]["EndpointName"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, name)) is ok


def test_timeout_and_handler_margin(template):
    timeout = template["Globals"]["Function"]["Timeout"]
    handler = load_handler(LAMBDA / "src" / "handler.py")
    assert timeout < 30  # API Gateway HTTP API's integration timeout is 30 s
    assert handler.guards.DEFAULT_REMAINING_S == timeout
    assert 0.5 <= handler.guards.SAFETY_MARGIN_S < timeout
    fetch_default = template["Parameters"]["FetchTimeoutSeconds"]["Default"]
    assert fetch_default < timeout - handler.guards.SAFETY_MARGIN_S  # leaves time for the endpoint call


def test_function_needs_nothing_but_the_runtime():
    """The handler (with its guards.py and url_fetch.py, shipped beside it) imports only the standard library and
    boto3/botocore (in the runtime), which is why ``sam deploy`` needs no ``sam build`` and no layer
    (lambda/README.md)."""
    import ast
    import sys

    roots = set()
    for name in ("handler.py", "guards.py", "url_fetch.py"):
        tree = ast.parse((LAMBDA / "src" / name).read_text())
        roots |= {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                  for alias in node.names}
        roots |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    outside = {r for r in roots if r not in sys.stdlib_module_names} - {"__future__", "guards", "url_fetch"}
    assert outside == {"boto3", "botocore"}
