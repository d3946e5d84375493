"""Stage 6, the API (notebook 06): the endpoint behind Lambda and API Gateway, so that
``curl -X POST -d '{"url": "..."}'`` answers the predicted class.

Read in this order:
1. ``lambda/template.yaml`` and ``lambda/src/handler.py`` (outside this package) — the function, its role and route,
   and the handler itself: route, parse, fetch, predict, answer;
2. ``stack`` — where notebook 06's requests go, chosen once for local or aws (``start_api``);
3. ``calls`` — calling the API as its users do: ``call_api``, the curl commands, latency from the client's side;
4. ``postman`` — the API as a Postman collection, run by newman;
5. ``lambda_package`` — the Lambda deployment package (the handler and, for the in-Lambda mode, the model).

On the local backend the gateway is :mod:`cloudalliance.local.gateway`, machinery a learner may skip.
"""
