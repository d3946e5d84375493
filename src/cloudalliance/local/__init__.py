"""Machinery a learner may skip: what lets the course run without AWS, and hold under hostile traffic.

Every piece is a real server on 127.0.0.1 that speaks the protocol of the AWS service it stands in for, so the
lessons above call it exactly as they call AWS:
- ``services`` — each server's process life cycle and state (start, health-check, stop by PID);
- ``endpoint_server`` — the local SageMaker endpoint (``/ping``, ``/invocations``, the Runtime path);
- ``gateway`` — the local API Gateway, which calls the real Lambda handler in-process;
- ``hardening`` — header and body deadlines, size limits and clean JSON errors around uvicorn.
The embedded S3 (SeaweedFS) is :mod:`cloudalliance.storage.server`.

Lessons import this layer; it never imports them back, except to load what it serves.
"""
