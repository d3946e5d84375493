"""A local AWS for rehearsing the course's aws branch: moto's server plus a proxy that plays SageMaker's containers.

Every request goes to moto (``moto.server.ThreadedMotoServer``, a real HTTP server that parses requests against
the botocore service models). moto keeps SageMaker's *control plane* (jobs, models, endpoint configs, endpoints)
but runs no containers, so the proxy in front of it plays the *data plane*:

- CreateTrainingJob: once moto accepts the job, every host's container runs as SageMaker runs it
  (training_container.py): ``/opt/ml`` laid out from the request and the emulated S3 (its own scratch folder per
  host, sandbox.py), then the request's ContainerEntrypoint, i.e. the SDK's own ``sm_train.sh`` and drivers,
  which start the course's entry script (torchrun across ``algo-1`` and ``algo-2`` for a two-instance job).
  ``/opt/ml/model`` comes back as ``model.tar.gz`` at the job's ``ModelArtifacts`` path. Until then
  DescribeTrainingJob says InProgress (moto says Completed at once: moto/sagemaker/models.py,
  ``FakeTrainingJob.__init__``, ``training_job_status = "Completed"``); a failed script makes it say Failed with
  ``/opt/ml/output/failure``. StopTrainingJob (not in moto) sends SIGTERM to the containers: Stopping, Stopped.
- CreateEndpoint / UpdateEndpoint: the endpoint says Creating / Updating while the model data of the endpoint
  config's variant is downloaded and served as the PyTorch inference image serves it (inference_container.py):
  sagemaker-pytorch-inference's entry point starts TorchServe, whose workers load ``code/inference.py`` through
  the toolkit's handler service, after the toolkit pip-installed ``code/requirements.txt``; one container per
  endpoint name. sagemaker-runtime's ``POST /endpoints/<name>/invocations`` goes to it, and an error status of the
  container comes back as ModelError (424), as on AWS. DeleteEndpoint stops it (by its PID).
- What moto does not check but AWS does, and a rerun depends on, the proxy checks: creating a model, an endpoint
  config, an endpoint or a training job whose name exists is an error on AWS (moto silently replaces it:
  moto/sagemaker/models.py ``create_model``/``create_endpoint_config``/``create_endpoint`` store by name without a
  check). UpdateEndpoint, which moto 5.2 does not implement, is answered here from moto's own state.

Nothing here is imported by ``src/``: the course's code sees only AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

AUTH_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request")
ACCOUNT_ID = "123456789012"  # moto's default account (moto/core/models.py DEFAULT_ACCOUNT_ID)
# 2 endpoint instances: the second pass updates the live endpoint, and UpdateEndpoint runs the new fleet beside
# the old one until it is InService (API_UpdateEndpoint), which the preflight counts
DEFAULT_QUOTAS = {"ml.m5.xlarge for training job usage": 1.0, "ml.m5.large for endpoint usage": 2.0}
INVOKE_PATH = re.compile(r"^/endpoints/([^/?]+)/invocations(?:\?.*)?$")
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
               "expect", "content-length"}


def stop_container(proc: subprocess.Popen) -> None:
    from inference_container import stop

    stop(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _arn(kind: str, name: str, region: str) -> str:
    return f"arn:aws:sagemaker:{region}:{ACCOUNT_ID}:{kind}/{name.lower()}"


@dataclasses.dataclass
class TrainingRun:
    name: str
    status: str = "InProgress"  # InProgress | Stopping | Stopped | Completed | Failed
    failure: str = ""
    seconds: float = 0.0
    containers: Any = None  # training_container.TrainingContainers once its hosts are laid out


@dataclasses.dataclass
class LocalEndpoint:
    name: str
    config: str
    model_data: str
    url: str
    proc: subprocess.Popen
    log: Path


class Emulator:
    """moto on one port, the proxy on another; ``endpoint_url`` is what AWS_ENDPOINT_URL points at."""

    def __init__(self, workdir: str | os.PathLike, region: str = "us-east-1", training_profile: str = "local-1cpu",
                 verbose: bool = False, quotas: dict[str, float] | None = None):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.region = region
        self.training_profile = training_profile
        self.verbose = verbose
        # the account's applied SageMaker quotas (Service Quotas), by quota name; the rehearsal's account has one
        # instance of each type it uses
        self.quotas = dict(quotas if quotas is not None else DEFAULT_QUOTAS)
        self.log_file: Path | None = None
        self.moto = None
        self.moto_url = ""
        self.httpd: http.server.ThreadingHTTPServer | None = None
        self.endpoint_url = ""
        self.trainings: dict[str, TrainingRun] = {}
        self.endpoints: dict[str, LocalEndpoint] = {}
        self.calls: list[str] = []  # "Service.Action" or "s3 METHOD" of every request, in order
        self._threads: list[threading.Thread] = []
        self._lock = threading.RLock()
        self._image_lock = threading.Lock()

    # ------------------------------------------------------------------ life cycle

    def start(self) -> "Emulator":
        import logging

        from moto.server import ThreadedMotoServer

        # moto's server logs every request, and a traceback for each API it lacks: into the emulator's log file
        werkzeug = logging.getLogger("werkzeug")
        werkzeug.setLevel(logging.ERROR)
        werkzeug.propagate = False
        self.log_file = self.workdir / "moto.log"
        self._log_handler = logging.FileHandler(self.log_file)
        werkzeug.addHandler(self._log_handler)

        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        emulator = self

        class Handler(_ProxyHandler):
            owner = emulator

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        t = threading.Thread(target=self.httpd.serve_forever, name="aws-proxy", daemon=True)
        t.start()
        return self

    def stop(self) -> list[str]:
        """Stop every endpoint and training container (by PID), wait for their threads, then the proxy and moto."""
        stopped = []
        for run in list(self.trainings.values()):
            if run.containers is not None and run.status in ("InProgress", "Stopping"):
                run.containers.stop()
                stopped.append(f"training job {run.name}")
        with self._lock:
            for name in list(self.endpoints):
                self._stop_endpoint(name)
                stopped.append(f"endpoint {name}")
        for t in self._threads:
            t.join(timeout=5)
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            stopped.append("proxy")
        if self.moto is not None:
            self.moto.stop()
            stopped.append("moto")
        if getattr(self, "_log_handler", None) is not None:
            import logging

            logging.getLogger("werkzeug").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        return stopped

    def __enter__(self) -> "Emulator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers

    def client(self, service: str):
        """A boto3 client straight to moto (the harness's own view, not through the proxy)."""
        import boto3

        return boto3.client(service, endpoint_url=self.moto_url, region_name=self.region,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def _backend(self):
        from moto.sagemaker.models import sagemaker_backends

        return sagemaker_backends[ACCOUNT_ID][self.region]

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"[emulator] {message}", flush=True)

    def _download(self, s3_uri: str, dest: Path) -> int:
        """Everything under an S3 URI (a key or a prefix) into ``dest``, keeping the relative paths."""
        from cloudalliance.storage import S3Location

        loc = S3Location.parse(s3_uri)
        s3 = self.client("s3")
        count = 0
        paginator = s3.get_paginator("list_objects_v2")
        prefix = loc.prefix
        for page in paginator.paginate(Bucket=loc.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                rel = key[len(prefix):].lstrip("/") if key != prefix else Path(key).name
                if not rel or key.endswith("/"):
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(loc.bucket, key, str(target))
                count += 1
        return count

    def _upload(self, folder: Path, s3_uri: str) -> int:
        """Every file under ``folder`` to an S3 prefix, keeping the relative paths."""
        from cloudalliance.storage import S3Location

        loc = S3Location.parse(s3_uri)
        s3 = self.client("s3")
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        for path in files:
            s3.upload_file(str(path), loc.bucket, f"{loc.prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}")
        return len(files)

    # ------------------------------------------------------------------ SageMaker: names that exist

    def exists(self, action: str, body: dict[str, Any]) -> str | None:
        """AWS's answer when a Create* names something that exists (moto would replace it), else None."""
        backend = self._backend()
        if action == "CreateModel" and body.get("ModelName") in backend._models:
            return f'Cannot create already existing model "{_arn("model", body["ModelName"], self.region)}".'
        if action == "CreateEndpointConfig" and body.get("EndpointConfigName") in backend.endpoint_configs:
            name = body["EndpointConfigName"]
            arn = _arn("endpoint-config", name, self.region)
            return f'Cannot create already existing endpoint configuration "{arn}".'
        if action == "CreateEndpoint" and body.get("EndpointName") in backend.endpoints:
            return f'Cannot create already existing endpoint "{_arn("endpoint", body["EndpointName"], self.region)}".'
        if action == "CreateTrainingJob" and body.get("TrainingJobName") in backend.training_jobs:
            return ("Training job names must be unique within an AWS account and region, and a training job with "
                    f"this name already exists ({_arn('training-job', body['TrainingJobName'], self.region)})")
        return None

    # ------------------------------------------------------------------ SageMaker: training

    def start_training(self, body: dict[str, Any]) -> None:
        name = body["TrainingJobName"]
        with self._lock:
            self.trainings[name] = TrainingRun(name)
        t = threading.Thread(target=self._train, args=(body,), name=f"training-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    def _train(self, body: dict[str, Any]) -> None:
        """The job's containers (training_container.py): the SDK's sm_train.sh and drivers start the course's
        entry script on every host; model.tar.gz and output.tar.gz go where DescribeTrainingJob says."""
        from cloudalliance.storage import S3Location
        from training_container import TrainingContainers, image_python

        name = body["TrainingJobName"]
        run = self.trainings[name]
        job_dir = self.workdir / "training-jobs" / name
        job_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            with self._image_lock:
                image_bin = image_python(self.workdir / "training-image")
            containers = TrainingContainers(body, job_dir, image_bin, self._download, self.region)
            run.containers = containers
            if run.status == "Stopping":  # StopTrainingJob came while the channels were downloaded
                containers.stop()
            self.log(f"training job {name}: {len(containers.hosts)} host(s), logs {job_dir}/algo-*/container.log")
            shipping = threading.Event()
            shipper = threading.Thread(target=self._ship_logs, args=(containers, shipping), daemon=True)
            shipper.start()
            code = containers.run()
            shipping.set()
            shipper.join()  # every line is in CloudWatch Logs before the job says it ended, as on AWS
            saved = containers.save_checkpoints(self._upload)
            if containers.stopped.is_set():
                run.status = "Stopped"
                self.log(f"training job {name}: Stopped ({saved} checkpoint files kept)")
                return
            if code != 0:
                # what SageMaker makes of /opt/ml/output/failure (API_DescribeTrainingJob: FailureReason, at most
                # 1024 characters); the SDK's driver writes its own there when the script did not
                run.failure = f"AlgorithmError: {containers.failure()}, exit code: {code}"[:1024]
                run.status = "Failed"
                self.log(f"training job {name}: Failed: {run.failure}")
                return
            model = S3Location.parse(self._backend().describe_training_job(name)["ModelArtifacts"]["S3ModelArtifacts"])
            s3 = self.client("s3")
            s3.upload_file(str(containers.pack("model", job_dir / "model.tar.gz")), model.bucket, model.prefix)
            output = model.prefix.rsplit("/", 1)[0] + "/output.tar.gz"
            s3.upload_file(str(containers.pack("output/data", job_dir / "output.tar.gz")), model.bucket, output)
            run.status = "Completed"
            self.log(f"training job {name}: Completed, s3://{model.bucket}/{model.prefix}")
        except Exception as exc:  # noqa: BLE001 - the harness's own failure, reported as the job's
            run.failure = f"InternalServerError: the rehearsal could not run the job: {exc}"
            run.status = "Failed"
            self.log(f"training job {name}: Failed: {exc}\n{traceback.format_exc()}")
        finally:
            run.seconds = time.perf_counter() - t0

    def _ship_logs(self, containers, done: threading.Event) -> None:
        """Each host's output into CloudWatch Logs as SageMaker sends it: group /aws/sagemaker/TrainingJobs, stream
        ``<job>/<host>-<epoch>``, a few seconds behind, where the SDK's ``TrainingJob.wait(logs=True)`` reads it
        (sagemaker/core/resources.py, MultiLogStreamHandler with prefix ``<job>/``)."""
        logs, group, name = self.client("logs"), "/aws/sagemaker/TrainingJobs", containers.body["TrainingJobName"]
        try:
            logs.create_log_group(logGroupName=group)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        streams, sent = {}, {}
        for host in containers.hosts:
            streams[host] = f"{name}/{host}-{int(time.time())}"
            logs.create_log_stream(logGroupName=group, logStreamName=streams[host])
            sent[host] = 0
        while True:
            last = done.wait(2.0)
            for host, stream in streams.items():
                path = containers.log(host)
                data = path.read_bytes()[sent[host]:] if path.exists() else b""
                complete = data if last else data[:data.rfind(b"\n") + 1]
                lines = [line for line in complete.decode(errors="replace").splitlines() if line.strip()]
                sent[host] += len(complete)
                now = int(time.time() * 1000)
                for i in range(0, len(lines), 1000):  # PutLogEvents takes up to 10,000 events
                    logs.put_log_events(logGroupName=group, logStreamName=stream,
                                        logEvents=[{"timestamp": now, "message": line} for line in lines[i:i + 1000]])
            if last:
                return

    def stop_training(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """StopTrainingJob (not in moto 5.2): SIGTERM to the job's containers; it then says Stopping, Stopped.

        https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_StopTrainingJob.html -- "sends the
        algorithm the SIGTERM signal"; an unknown job is a ValidationException (ResourceNotFound on AWS).
        """
        name = body.get("TrainingJobName", "")
        run = self.trainings.get(name)
        if run is None:
            return 400, _error("ValidationException", f"Requested resource not found: training job {name}")
        if run.status != "InProgress":
            return 400, _error("ValidationException", f"The training job {name} is {run.status}, not InProgress")
        run.status = "Stopping"
        if run.containers is not None:
            threading.Thread(target=run.containers.stop, name=f"stop-{name}", daemon=True).start()
        return 200, {}

    def patch_training_description(self, reply: dict[str, Any]) -> dict[str, Any]:
        run = self.trainings.get(reply.get("TrainingJobName", ""))
        if run is None or run.status == "Completed":
            return reply
        reply["TrainingJobStatus"] = run.status
        reply["SecondaryStatus"] = {"InProgress": "Training"}.get(run.status, run.status)
        if run.status == "Failed":
            reply["FailureReason"] = run.failure
        else:
            reply.pop("TrainingEndTime", None)
        return reply

    # ------------------------------------------------------------------ SageMaker: endpoints

    def _model_data_for_config(self, config_name: str) -> str:
        backend = self._backend()
        config = backend.describe_endpoint_config(config_name)
        variant = config["ProductionVariants"][0]
        model = backend.describe_model(variant["ModelName"])
        container = model.primary_container or (model.containers or [{}])[0]
        data = container.get("ModelDataUrl") or (container.get("ModelDataSource") or {}).get(
            "S3DataSource", {}).get("S3Uri", "")
        if not data:
            raise RuntimeError(f"model {variant['ModelName']} has no ModelDataUrl")
        return data

    def _model_environment(self, config_name: str) -> dict[str, str]:
        backend = self._backend()
        model = backend.describe_model(backend.describe_endpoint_config(config_name)["ProductionVariants"][0][
            "ModelName"])
        container = model.primary_container or (model.containers or [{}])[0]
        return dict(container.get("Environment") or {})

    def start_endpoint(self, name: str, config_name: str) -> None:
        """Serve the config's model data under ``name`` (replacing what served it before) in the inference
        container (inference_container.py: the toolkit's entry point, TorchServe and its workers)."""
        from cloudalliance.storage import S3Location
        from inference_container import start_inference_container

        model_data = self._model_data_for_config(config_name)
        folder = self.workdir / "endpoints" / f"{name}-{int(time.time() * 1000)}"
        archive = folder / "model.tar.gz"
        archive.parent.mkdir(parents=True, exist_ok=True)
        loc = S3Location.parse(model_data)
        try:
            self.client("s3").download_file(loc.bucket, loc.prefix, str(archive))
        except Exception as exc:  # noqa: BLE001 - the reason names the model data
            raise RuntimeError(f"could not download the model data {model_data}: {exc}") from exc
        port = free_port()
        log = folder / "endpoint.log"
        proc = start_inference_container(archive, folder / "container", port, log,
                                         env=self._model_environment(config_name), timeout=180)
        url = f"http://127.0.0.1:{port}"
        with self._lock:
            if name not in self._backend().endpoints:  # deleted while it started
                stop_container(proc)
                raise RuntimeError(f"endpoint {name} was deleted while it started")
            if name in self.endpoints:
                self._stop_endpoint(name)
            self.endpoints[name] = LocalEndpoint(name, config_name, model_data, url, proc, log)
        self.log(f"endpoint {name}: serving {model_data} at {url} (TorchServe, pid {proc.pid})")

    def deploy_in_background(self, name: str, config_name: str, updating: bool) -> None:
        """CreateEndpoint / UpdateEndpoint return at once; the endpoint says Creating (Updating) until its server
        answers /ping, then InService -- or Failed with a FailureReason when it never does. During an update the
        previous model keeps serving and, if the update fails, goes on serving (InService, FailureReason set).

        https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_DescribeEndpoint.html (EndpointStatus:
        Creating, Updating, InService, Failed; "FailureReason"); API_UpdateEndpoint.html: "the endpoint ... uses
        the previous EndpointConfig ... while the new one is being deployed".
        """
        endpoint = self._backend().endpoints[name]
        endpoint.endpoint_status = "Updating" if updating else "Creating"
        endpoint.failure_reason = None

        def deploy() -> None:
            try:
                self.start_endpoint(name, config_name)
            except Exception as exc:  # noqa: BLE001 - the endpoint's failure, as DescribeEndpoint reports it
                self.log(f"endpoint {name}: {'update' if updating else 'creation'} failed: {exc}")
                endpoint.failure_reason = f"The primary container for production variant AllTraffic did not pass " \
                                          f"the ping health check: {exc}"[:1024]
                endpoint.endpoint_status = "InService" if updating else "Failed"
                return
            from moto.core.utils import utcnow

            if updating:
                config = self._backend().describe_endpoint_config(config_name)
                endpoint.endpoint_config_name = config_name
                endpoint.production_variants = endpoint._process_production_variants(config["ProductionVariants"])
            endpoint.last_modified_time = utcnow()
            endpoint.endpoint_status = "InService"

        t = threading.Thread(target=deploy, name=f"endpoint-{name}", daemon=True)
        self._threads.append(t)
        t.start()

    def _stop_endpoint(self, name: str) -> None:
        ep = self.endpoints.pop(name, None)
        if ep is None:
            return
        stop_container(ep.proc)
        self.log(f"endpoint {name}: stopped (pid {ep.proc.pid})")

    def update_endpoint(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """UpdateEndpoint (not in moto 5.2): point the endpoint at another config and serve its model.

        https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_UpdateEndpoint.html -- request
        EndpointName, EndpointConfigName; response {"EndpointArn"}; an unknown endpoint or config is a
        ValidationException.
        """
        backend = self._backend()
        name, config_name = body.get("EndpointName", ""), body.get("EndpointConfigName", "")
        endpoint = backend.endpoints.get(name)
        if endpoint is None:
            arn = _arn("endpoint", name, self.region)
            return 400, _error("ValidationException", f'Could not find endpoint "{arn}".')
        if config_name not in backend.endpoint_configs:
            return 400, _error("ValidationException", "Could not find endpoint configuration "
                                                      f'"{_arn("endpoint-config", config_name, self.region)}".')
        if endpoint.endpoint_status != "InService":
            return 400, _error("ValidationException", f'Cannot update in-progress endpoint "{endpoint.arn}".')
        self.deploy_in_background(name, config_name, updating=True)
        return 200, {"EndpointArn": endpoint.arn}

    def invoke(self, name: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        ep = self.endpoints.get(name)
        if ep is None:
            # https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpoint.html
            msg = f"Endpoint {name} of account {ACCOUNT_ID} not found."
            return 400, {"Content-Type": "application/json", "x-amzn-ErrorType": "ValidationError"}, json.dumps(
                {"__type": "ValidationError", "message": msg}).encode()
        keep = {k: v for k, v in headers.items() if k.lower() in ("content-type", "accept")}
        # the container behind the endpoint: its own status and body, which SageMaker wraps as below
        req = urllib.request.Request(f"{ep.url}/invocations", data=body, method="POST", headers=keep)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, {"Content-Type": resp.headers.get("Content-Type", "application/json"),
                                     "x-Amzn-Invoked-Production-Variant": "AllTraffic"}, resp.read()
        except urllib.error.HTTPError as exc:
            # a model error is ModelError (424) on AWS, with the container's status and body in the message
            payload = exc.read().decode(errors="replace")
            return 424, {"Content-Type": "application/json", "x-amzn-ErrorType": "ModelError"}, json.dumps(
                {"__type": "ModelError", "OriginalStatusCode": exc.code, "OriginalMessage": payload,
                 "message": f"Received client error ({exc.code}) from primary with message \"{payload}\""}).encode()


def simulate_principal_policy(form: dict[str, list[str]]) -> tuple[int, str]:
    """IAM SimulatePrincipalPolicy (moto 5.2: "The simulate_principal_policy action has not been implemented"),
    which SDK v3's role check calls (sagemaker/core/helper/iam_role_resolver.py ``_simulate_denied_actions``).

    https://docs.aws.amazon.com/IAM/latest/APIReference/API_SimulatePrincipalPolicy.html -- request
    PolicySourceArn, ActionNames.member.N, ResourceArns.member.N; response EvaluationResults of EvalActionName,
    EvalResourceName, EvalDecision. As AWS answers (botocore's iam service-2.json, EvaluationResult): ONE result per
    action, whose EvalDecision is the most restrictive across the resources asked about. The rehearsal's role
    stands for AmazonSageMakerFullAccess plus README's bucket policy (s3:ListBucket on the bucket, object actions
    on bucket/*): an object action asked about the bucket's own ARN is implicitDeny, as on AWS. Non-S3 actions are
    allowed. An unknown role is NoSuchEntity (404).
    """
    from moto.iam.models import iam_backends

    arn = (form.get("PolicySourceArn") or [""])[0]
    role_name = arn.rsplit("/", 1)[-1]
    ns = "https://iam.amazonaws.com/doc/2010-05-08/"
    try:
        iam_backends[ACCOUNT_ID]["aws"].get_role(role_name)
    except Exception:  # noqa: BLE001 - moto's NoSuchEntity
        return 404, (f'<ErrorResponse xmlns="{ns}"><Error><Type>Sender</Type><Code>NoSuchEntity</Code>'
                     f"<Message>The role with name {role_name} cannot be found.</Message></Error>"
                     "<RequestId>rehearsal</RequestId></ErrorResponse>")
    actions = [v[0] for k, v in sorted(form.items(), key=lambda kv: int(kv[0].rsplit(".", 1)[-1])
                                       if kv[0].startswith("ActionNames.member.") else 0)
               if k.startswith("ActionNames.member.")]
    resources = [v[0] for k, v in form.items() if k.startswith("ResourceArns.member.")] or ["*"]

    def allowed(action: str, resource: str) -> bool:
        if not action.startswith("s3:") or resource == "*":
            return True
        is_object = "/" in resource.split(":::", 1)[-1]
        if action in ("s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"):
            return not is_object
        return is_object  # GetObject, PutObject, DeleteObject, ...: granted on bucket/* only

    def decision(action: str) -> str:
        return "allowed" if all(allowed(action, r) for r in resources) else "implicitDeny"

    members = "".join(f"<member><EvalActionName>{a}</EvalActionName><EvalResourceName>*</EvalResourceName>"
                      f"<EvalDecision>{decision(a)}</EvalDecision><MatchedStatements/><MissingContextValues/>"
                      "</member>" for a in actions)
    return 200, (f'<SimulatePrincipalPolicyResponse xmlns="{ns}"><SimulatePrincipalPolicyResult>'
                 f"<IsTruncated>false</IsTruncated><EvaluationResults>{members}</EvaluationResults>"
                 "</SimulatePrincipalPolicyResult><ResponseMetadata><RequestId>rehearsal</RequestId>"
                 "</ResponseMetadata></SimulatePrincipalPolicyResponse>")


def list_service_quotas(quotas: dict[str, float], region: str) -> dict[str, Any]:
    """Service Quotas ListServiceQuotas for ServiceCode "sagemaker" (moto 5.2: "The list_service_quotas action has
    not been implemented").

    https://docs.aws.amazon.com/servicequotas/2019-06-24/apireference/API_ListServiceQuotas.html -- response
    Quotas: ServiceQuota (ServiceCode, ServiceName, QuotaArn, QuotaCode, QuotaName, Value, Unit, Adjustable,
    GlobalQuota). The quota codes here are placeholders: the course reads quotas by name.
    """
    return {"Quotas": [
        {"ServiceCode": "sagemaker", "ServiceName": "Amazon SageMaker", "QuotaCode": f"L-REHEARSAL{i:02d}",
         "QuotaArn": f"arn:aws:servicequotas:{region}:{ACCOUNT_ID}:sagemaker/L-REHEARSAL{i:02d}",
         "QuotaName": name, "Value": float(value), "Unit": "None", "Adjustable": True, "GlobalQuota": False}
        for i, (name, value) in enumerate(sorted(quotas.items()))]}


def _decode_hyperparameter(value: str) -> Any:
    """SageMaker passes hyperparameters as strings; SDK v3 JSON-encodes the non-string ones."""
    try:
        decoded = json.loads(value)
    except (TypeError, ValueError):
        return value
    return decoded if not isinstance(decoded, (dict, list)) else value


def _error(code: str, message: str) -> dict[str, Any]:
    return {"__type": code, "message": message}


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    owner: Emulator
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, headers: dict[str, str], body: bytes, head: bool = False) -> None:
        self.send_response(status)
        length = None
        for k, v in headers.items():
            if k.lower() == "content-length":
                length = v
            if k.lower() not in HOP_HEADERS:
                self.send_header(k, v)
        self.send_header("Content-Length", length if head and length is not None else str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/x-amz-json-1.1"}
        if status >= 400:
            headers["x-amzn-ErrorType"] = payload.get("__type", "")
        self._send(status, headers, json.dumps(payload, default=str).encode())

    def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        host = self.owner.moto_url.removeprefix("http://")
        conn = http.client.HTTPConnection(host, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        headers["Content-Length"] = str(len(body))
        try:
            conn.request(self.command, self.path, body=body if body or self.command not in ("GET", "HEAD") else None,
                         headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k: v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def _handle(self) -> None:
        head = self.command == "HEAD"
        body = self._body()
        owner = self.owner
        target = self.headers.get("X-Amz-Target", "")
        service, _, action = target.partition(".")
        owner.calls.append(target or f"{self.command} {self.path.split('?')[0]}")
        try:
            m = INVOKE_PATH.match(self.path)
            if m and self.command == "POST":
                status, headers, data = owner.invoke(urllib.parse.unquote(m.group(1)), body, dict(self.headers))
                return self._send(status, headers, data)
            scope = AUTH_SCOPE.search(self.headers.get("Authorization", ""))
            if scope and scope.group(1) == "iam" and self.command == "POST":
                form = urllib.parse.parse_qs(body.decode(errors="replace"))
                owner.calls.append("iam." + (form.get("Action") or [""])[0])
                if form.get("Action") == ["SimulatePrincipalPolicy"]:
                    status, xml = simulate_principal_policy(form)
                    return self._send(status, {"Content-Type": "text/xml"}, xml.encode())
            if target == "ServiceQuotasV20190624.ListServiceQuotas":
                request = json.loads(body or b"{}")
                if request.get("ServiceCode") == "sagemaker":
                    return self._json(200, list_service_quotas(owner.quotas, owner.region))
            if service == "SageMaker":
                request = json.loads(body or b"{}")
                if action.startswith("Create") and (message := owner.exists(action, request)):
                    code = "ResourceInUse" if action == "CreateTrainingJob" else "ValidationException"
                    return self._json(400, _error(code, message))
                if action == "UpdateEndpoint":
                    return self._json(*owner.update_endpoint(request))
                if action == "StopTrainingJob":
                    return self._json(*owner.stop_training(request))
                status, headers, data = self._forward(body)
                if status == 200 and action.startswith("Describe"):
                    # moto stores absent structures as {} / [] and returns them (moto/sagemaker/models.py
                    # create_model: ``vpc_config=vpc_config or {}``; FakeEndpoint/FakeEndpointConfig
                    # ``data_capture_config``); AWS leaves absent members out, and SDK v3's pydantic shapes reject
                    # a VpcConfig or DataCaptureConfig without their required fields
                    reply = json.loads(data)
                    data = json.dumps({k: v for k, v in reply.items() if v not in ({}, [])}).encode()
                if status == 200 and action == "CreateTrainingJob":
                    owner.start_training(request)
                elif status == 200 and action == "DescribeTrainingJob":
                    data = json.dumps(owner.patch_training_description(json.loads(data))).encode()
                elif status == 200 and action == "CreateEndpoint":
                    owner.deploy_in_background(request["EndpointName"], request["EndpointConfigName"], updating=False)
                elif status == 200 and action == "DeleteEndpoint":
                    with owner._lock:
                        owner._stop_endpoint(request["EndpointName"])
                return self._send(status, headers, data)
            status, headers, data = self._forward(body)
            return self._send(status, headers, data, head=head)
        except ConnectionError:  # the client went away (an interrupted course run): nobody to answer
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a harness bug is a 500 that says where
            owner.log(f"proxy error on {target or self.path}: {traceback.format_exc()}")
            return self._json(500, _error("InternalFailure", f"rehearsal proxy: {type(exc).__name__}: {exc}"))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

