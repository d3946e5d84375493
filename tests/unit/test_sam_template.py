"""lambda/template.yaml: valid for cfn-lint, one route, a role that may only invoke one endpoint."""

import subprocess
import sys
from pathlib import Path

import yaml

TEMPLATE = Path(__file__).resolve().parents[2] / "lambda" / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    pass


for _tag in ("!Ref", "!Sub", "!GetAtt", "!Join", "!If", "!Equals", "!Not", "!Select", "!Split"):
    _CfnLoader.add_constructor(_tag, lambda loader, node, tag=_tag: {tag: loader.construct_scalar(node)
                                                                     if isinstance(node, yaml.ScalarNode) else
                                                                     loader.construct_sequence(node)})


def test_cfn_lint_passes():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    proc = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _resources():
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def test_forwarding_function_route_handler_and_least_privilege():
    doc = _resources()
    resources = doc["Resources"]
    fn = resources["PredictFunction"]["Properties"]
    assert fn["Handler"] == "handler.lambda_handler"
    # its code is lambda/src only: `sam deploy` zips a CodeUri folder whole, and lambda/package (the other
    # function's ONNX Runtime + model, ~150 MB) must not ride along
    assert fn["CodeUri"] == "src/" and (TEMPLATE.parent / "src" / "handler.py").is_file()
    assert fn["Environment"]["Variables"]["ENDPOINT_NAME"] == {"!Ref": "EndpointName"}
    assert "ALLOWED_PRIVATE_HOSTS" not in fn["Environment"]["Variables"], "never allow private hosts on AWS"
    statements = [s for p in resources["PredictFunctionRole"]["Properties"]["Policies"]
                  for s in p["PolicyDocument"]["Statement"]]
    assert statements == [{
        "Effect": "Allow", "Action": "sagemaker:InvokeEndpoint",
        "Resource": {"!Sub": "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:endpoint/${EndpointName}"},
    }]


def test_in_lambda_function_has_its_package_and_no_aws_permission():
    resources = _resources()["Resources"]
    fn = resources["PredictInLambdaFunction"]
    assert fn["Condition"] == "HasLambdaMode"
    props = fn["Properties"]
    assert props["Handler"] == "handler_onnx.lambda_handler" and props["CodeUri"] == "package/"
    assert (TEMPLATE.parent / "src" / "handler_onnx.py").is_file()
    # sam package fails on a CodeUri that does not exist, even for a resource whose condition is false
    assert (TEMPLATE.parent / "package").is_dir()
    assert props["MemorySize"] == {"!Ref": "InLambdaMemorySize"}
    # unset: handler_onnx derives the threads from the memory size, and a package built before it did still starts
    assert "INFERENCE_THREADS" not in props["Environment"]["Variables"]
    role = resources["InLambdaFunctionRole"]["Properties"]
    assert "Policies" not in role
    # partition-aware (aws, aws-cn, aws-us-gov), as the template writes every ARN
    assert role["ManagedPolicyArns"] == [{"!Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"}]
    assert "ALLOWED_PRIVATE_HOSTS" not in props["Environment"]["Variables"]


def _route_targets(doc, mode):
    """The routes CloudFormation creates for ``mode`` and the integration each targets (conditions evaluated)."""
    conditions = {"HasEndpointMode": mode != "lambda", "HasLambdaMode": mode != "endpoint",
                  "IsLambdaOnly": mode == "lambda", "IsBoth": mode == "both"}
    assert set(doc["Conditions"]) == set(conditions)
    routes = {}
    for name, res in doc["Resources"].items():
        if res["Type"] != "AWS::ApiGatewayV2::Route" or not conditions.get(res.get("Condition"), True):
            continue
        target = res["Properties"]["Target"]
        if "!If" in target:
            cond, yes, no = target["!If"]
            target = yes if conditions[cond] else no
        integration = target["!Sub"].split("${")[1].rstrip("}")
        assert conditions[doc["Resources"][integration]["Condition"]], f"{name} targets a resource not created"
        routes[res["Properties"]["RouteKey"]] = doc["Resources"][integration]["Properties"]["IntegrationUri"]["!GetAtt"]
    return routes


def test_each_mode_gets_its_routes():
    doc = _resources()
    assert doc["Parameters"]["InferenceMode"]["AllowedValues"] == ["endpoint", "lambda", "both"]
    assert _route_targets(doc, "endpoint") == {"POST /predict": "PredictFunction.Arn"}
    assert _route_targets(doc, "lambda") == {"POST /predict": "PredictInLambdaFunction.Arn"}
    assert _route_targets(doc, "both") == {"POST /predict": "PredictFunction.Arn",
                                           "POST /predict/endpoint": "PredictFunction.Arn",
                                           "POST /predict/lambda": "PredictInLambdaFunction.Arn"}
    for name in ("EndpointModeIntegration", "InLambdaIntegration"):
        props = doc["Resources"][name]["Properties"]
        assert (props["IntegrationType"], props["PayloadFormatVersion"]) == ("AWS_PROXY", "2.0")
        assert props["TimeoutInMillis"] <= 30000  # HTTP API's maximum integration timeout


def test_architecture_and_json_logs_for_both_functions():
    """The handlers log with the standard library: Lambda's JSON log format writes each line with the request id
    and its ``extra`` keys (awslambdaric's ``JsonFormatter``: every non-reserved record attribute), and its
    application log level lets ``logger.info`` through (the runtime sets the root logger to it)."""
    doc = _resources()
    assert doc["Parameters"]["Architecture"]["AllowedValues"] == ["x86_64", "arm64"]
    function = doc["Globals"]["Function"]
    assert function["Architectures"] == [{"!Ref": "Architecture"}]
    assert function["LoggingConfig"]["LogFormat"] == "JSON"
    assert function["LoggingConfig"]["ApplicationLogLevel"] == "INFO"
    # the platform's START and REPORT lines (Init Duration, Billed Duration) are system logs at INFO
    assert function["LoggingConfig"]["SystemLogLevel"] in ("INFO", "DEBUG")
    assert "Layers" not in function


def test_sam_validate_lint_passes():
    """``sam validate --lint``: the SAM translator expands the template and cfn-lint checks the result (the plain
    cfn-lint above has no SAM translator in the course's environment). SAM CLI lives in its own environment
    (.tools/sam, `make sam`); installed here on first use."""
    import pytest

    from cloudalliance.api import lambda_package

    try:
        sam = lambda_package.ensure_sam()
    except lambda_package.PackageError as exc:
        pytest.skip(f"SAM CLI could not be installed here: {exc}")
    proc = lambda_package.sam_validate(TEMPLATE, sam)
    assert proc.returncode == 0 and "is a valid SAM Template" in proc.stdout, proc.stdout + proc.stderr


def test_rules_refuse_an_endpoint_mode_without_an_endpoint():
    rule = _resources()["Rules"]["EndpointNameNeeded"]
    assert rule["RuleCondition"] == {"!Not": [{"!Equals": [{"!Ref": "InferenceMode"}, "lambda"]}]}
    assert rule["Assertions"][0]["Assert"] == {"!Not": [{"!Equals": [{"!Ref": "EndpointName"}, ""]}]}


LAMBDA_README = TEMPLATE.parent / "README.md"


def test_lambda_readme_deploys_without_a_build_and_says_how_to_answer_the_prompts():
    """Issue 10, defect 3: `sam build` needs a python3.12 binary the course environment does not have
    ("Binary validation failed", aws-lambda-builders workflow.py), and `--guided` stops at "has no
    authentication. Is this okay? [y/N]" unless answered y (samcli guided_context.py, prompt_authorization)."""
    text = LAMBDA_README.read_text()
    blocks = text.split("```")[1::2]  # the commands a reader copies
    commands = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()
                if line.strip().startswith("sam ")]
    assert commands and all(c.startswith(("sam deploy --guided -t lambda/template.yaml", "sam validate", "sam delete"))
                            for c in commands), commands
    # the stack carries the run's tag, which `aws cleanup --run` looks for, under the name `aws check` looks at
    from cloudalliance import aws

    deploys = [c for c in commands if c.startswith("sam deploy")]
    assert deploys and all(f"--tags {aws.RUN_TAG}=<run-id>" in c and "--stack-name cloudalliance" in c
                           for c in deploys), deploys
    assert "sam build --use-container" in text and "Binary validation" in text  # why not a plain `sam build`
    assert "no authentication. Is this okay?" in text and "Answer `y`" in text


def test_every_role_hint_asks_for_read_and_write_on_the_bucket():
    """Issue 10, defect 2: the job writes checkpoints and output and the endpoint reads the model, so a role
    that may only read the bucket fails midway; each hint that tells a learner what the role needs says so."""
    from cloudalliance import aws

    root = TEMPLATE.parents[1]
    assert "read and write the bucket" in aws.ROLE_HELP
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "params" / "aws.yaml",
                 *sorted((root / "src").rglob("*.py")),
                 *sorted((root / "notebooks").glob("*.ipynb"))]:
        text = " ".join(path.read_text().split())
        for phrase in ("read access to the bucket", "may read the bucket", "can read the bucket"):
            assert phrase not in text, f"{path.name} asks only for read access: {phrase!r}"


def _shell_commands(path: Path, program: str) -> list[list[str]]:
    """The commands of ``path``'s code blocks whose program ends with ``program``, split as a shell would."""
    import shlex

    blocks = path.read_text().split("```")[1::2]
    lines = [line.split("#", 1)[0] for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line) for line in lines if line.split() and line.split()[0].endswith(program)]


def _values(argv: list[str], option: str) -> list[str]:
    """What follows ``option`` up to the next option (SAM's ``--tags k1=v1 k2=v2`` takes several)."""
    if option not in argv:
        return []
    rest = argv[argv.index(option) + 1:]
    return rest[:next((i for i, arg in enumerate(rest) if arg.startswith("-")), len(rest))]


def test_every_sam_deploy_in_the_readmes_makes_a_stack_that_aws_cleanup_deletes():
    """The stack is found by its tag, whatever its name (aws_cleanup._delete_stacks): each documented `sam deploy`
    tags it with the run id the same README's cleanup is given, under the name `aws check` looks at. CloudFormation
    gives a stack the tags `sam deploy --tags` names; a stack like that is what the cleanup's step is shown."""
    import boto3
    from botocore.stub import Stubber

    from cloudalliance import aws, aws_cleanup, defaults

    root = TEMPLATE.parents[1]
    assert yaml.safe_load((root / "params" / "aws.yaml").read_text())["parameters"]["STACK_NAME"] == defaults.STACK_NAME
    deploys = 0
    for path in (root / "README.md", LAMBDA_README):
        cleanup_runs = {run for argv in _shell_commands(path, "cloudalliance") if argv[1:3] == ["aws", "cleanup"]
                        for run in _values(argv, "--run")} or {"<run-id>"}  # lambda/README.md names no run
        for argv in _shell_commands(path, "sam"):
            if argv[1] != "deploy":
                continue
            deploys += 1
            name = _values(argv, "--stack-name")[0]
            tags = dict(tag.split("=", 1) for tag in _values(argv, "--tags"))
            assert name == defaults.STACK_NAME and tags.get(aws.RUN_TAG) in cleanup_runs, (path.name, argv)
            cfn = boto3.client("cloudformation", region_name="us-east-1", aws_access_key_id="x",
                               aws_secret_access_key="x")
            stub = Stubber(cfn)
            stub.add_response("describe_stacks", {"Stacks": [
                {"StackName": name, "CreationTime": "2026-12-02T00:00:00Z", "StackStatus": "CREATE_COMPLETE",
                 "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]}, {})
            stub.add_response("delete_stack", {}, {"StackName": name})
            removed: dict[str, list[str]] = {"stack": []}
            with stub:
                aws_cleanup._delete_stacks(cfn, tags[aws.RUN_TAG], removed, [])
            assert removed["stack"] == [name], (path.name, argv)
    assert deploys >= 3  # README step 7, and lambda/README.md's two
