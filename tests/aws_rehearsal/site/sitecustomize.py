"""Rehearsal only (on PYTHONPATH in the rehearsal's processes, never installed): send hard-coded AWS endpoints
to the emulator too.

botocore honours AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_<SERVICE> only when a client is created without an explicit
``endpoint_url`` (botocore 1.44 args.py ``_compute_configured_endpoint_url``: "if endpoint_url is not None: return
endpoint_url", else the config store's ``endpoint_url``; configprovider.py ``_get_endpoint_url_environment_global``
reads AWS_ENDPOINT_URL). The SageMaker SDK passes an explicit public STS endpoint for
GetCallerIdentity (sagemaker/core/helper/session_helper.py ``Session.account_id`` and
``generate_default_sagemaker_bucket_name``: ``endpoint_url=sts_regional_endpoint(region)``), which on a network
without AWS would leave the emulator. When AWS_ENDPOINT_URL is set, an explicit ``https://*.amazonaws.com`` endpoint
is dropped so that the environment's endpoint applies -- what a DNS override does in other CI set-ups. Any other
explicit endpoint (a local server's) is left alone.

With REHEARSAL_BOTOCORE_CALLS set, every client also appends "<signing name>:<operation>" of each call to that file
(botocore's ``before-call`` event, once per call, not per retry): rehearse.py checks them against the IAM policy.
"""

import os
import re

_PUBLIC = re.compile(r"^https://[^/]+\.amazonaws\.com(\.cn)?/?$")

if os.environ.get("AWS_ENDPOINT_URL"):
    try:
        import botocore.session as _bs
    except ImportError:  # not every process of the rehearsal has botocore
        _bs = None
    if _bs is not None and not getattr(_bs.Session.create_client, "_rehearsal", False):
        _create_client = _bs.Session.create_client
        _calls = os.environ.get("REHEARSAL_BOTOCORE_CALLS")

        def _record(model, **kwargs):
            with open(_calls, "a") as out:  # one short line per write: appends from several processes stay whole
                out.write(f"{model.service_model.signing_name}:{model.name}\n")

        def create_client(self, service_name, *args, **kwargs):
            url = kwargs.get("endpoint_url")
            if url and _PUBLIC.match(str(url)):
                kwargs["endpoint_url"] = None
            client = _create_client(self, service_name, *args, **kwargs)
            if _calls:
                client.meta.events.register("before-call", _record)
            return client

        create_client._rehearsal = True
        _bs.Session.create_client = create_client
