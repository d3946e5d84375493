"""Stage 3, training (notebook 03): one entry script under SageMaker's training contract, run locally or as a
SageMaker training job, with the same hyperparameters both ways.

Read in this order:
1. ``launch`` — what notebook 03 calls: the data channel from S3, then the script locally (``run_local``) or on AWS;
2. ``sagemaker`` — the SageMaker job with SDK v3's ``ModelTrainer``: the source folder (``source_bundle``), the
   trainer, the channels and ``train`` (``start_sagemaker_training``), the model brought back;
3. ``train`` — the entry script itself: data, recipe, epochs, checkpoints, the model folder;
4. ``config`` — the hyperparameters (:class:`~.config.TrainConfig`), the one place they are declared;
5. ``models`` — the pretrained network with a new six-class head (``create_model``): transfer learning's start;
6. ``recipe`` — frozen trunk, AdamW, label smoothing, the weights' average, the training step;
7. ``results`` — the record of a run and the tables notebook 03 draws from several.

``onnxrt`` (the frozen trunk in ONNX Runtime) and ``runtime`` (ranks, devices, threads) are the machinery under them.
"""
