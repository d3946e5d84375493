"""The course's defaults, each written once: the modules, the CLI and the parameter files' fallbacks read them here.

(The notebooks' ``parameters`` cells repeat them as literals, as papermill needs, and ``lambda/src`` keeps its own
fallback, since the deployed function cannot import this package.)
"""

REGION = "us-east-1"  # AWS region when none is configured; also the embedded S3's region and the price table's
ENDPOINT_NAME = "cloudalliance"  # the SageMaker endpoint (and the local endpoint) the course creates and calls
STACK_NAME = "cloudalliance"  # the SAM stack of the API (`sam deploy --stack-name`), which `aws check` looks at

# Lambda: the memory sizes lambda/template.yaml gives the two functions, and what a vCPU costs in memory
FUNCTION_MEMORY_MB = 512  # Globals.Function.MemorySize: the forwarding function's
IN_LAMBDA_MEMORY_MB = 1024  # Parameters.InLambdaMemorySize.Default: the model-in-Lambda function's
LAMBDA_MB_PER_VCPU = 1769  # "At 1,769 MB, a function has the equivalent of one vCPU" (Lambda's configuration-memory)
