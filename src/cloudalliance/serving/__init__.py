"""Stage 5, serving (notebook 05): the trained model as a SageMaker endpoint.

Read in this order:
1. ``model_artifact`` — ``model.tar.gz`` as the PyTorch inference container takes it (``package_model``);
2. ``artifact_code/inference.py`` — the four functions the container calls: ``model_fn``, ``input_fn``,
   ``predict_fn``, ``output_fn``;
3. ``deploy`` — the endpoint with SDK v3 (``deploy_sagemaker``), the runtime client, the endpoint's deletion;
4. ``quantize`` (notebook 06) — the same model in int8 for the Lambda function, if the held-out images allow it.

On the local backend the endpoint is :mod:`cloudalliance.local.endpoint_server`, machinery a learner may skip.
"""
