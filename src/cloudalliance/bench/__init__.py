"""Stage 7, benchmarking (notebook 07 and ``cloudalliance bench``): every step's time and cost, with charts.

Read in this order:
1. ``charts`` — the figures and the summary table across a run's records;
2. ``prices`` — the AWS list prices every cost comes from;
3. ``serving_costs`` — what serving costs by traffic, endpoint against Lambda;
4. ``loadtest`` — the API under concurrent load;
5. ``comparison`` — several machines' runs (or the study's) side by side;
6. ``lambda_modes`` — the model in the Lambda function against the endpoint, cold and warm.
"""
