"""The course's defaults, each written once: the modules, the CLI and the parameter files' fallbacks read them here.

(The notebooks' ``parameters`` cells repeat them as literals, as papermill needs, and ``lambda/src`` keeps its own
fallback, since the deployed function cannot import this package.)
"""

REGION = "us-east-1"  # AWS region when none is configured; also the embedded S3's region and the price table's
ENDPOINT_NAME = "cloudalliance"  # the SageMaker endpoint (and the local endpoint) the course creates and calls
