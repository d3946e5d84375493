"""Stage 6, the API (notebook 06): the endpoint behind Lambda and API Gateway, so that
``curl -X POST -d '{"url": "..."}'`` answers the predicted class.

Read in this order:
1. ``lambda/src/handler.py`` (outside this package) — the Lambda function itself: route, parse, fetch, predict,
   answer;
2. ``calls`` — calling the API as its users do: ``call_api``, the curl commands, latency from the client's side;
3. ``postman`` — the API as a Postman collection, run by newman;
4. ``lambda_package`` — the Lambda deployment package (the handler and, for the in-Lambda mode, the model).

On the local backend the gateway is :mod:`cloudalliance.local.gateway`, machinery a learner may skip.
"""
