#!/bin/sh
# StreamFunction's handler: the AWS Lambda Web Adapter (layer, AWS_LAMBDA_EXEC_WRAPPER=
# /opt/bootstrap) runs this script at init, waits for /health, then turns each Function
# URL invocation into an HTTP request and streams the response back (RESPONSE_STREAM).
# One process, one model: Lambda sends an instance one request at a time.
# handlers.lambda_stream:app is handlers.http:app plus the adapter's SnapStart hook routes.
export PYTHONPATH="${LAMBDA_TASK_ROOT:-.}:/opt/python${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m uvicorn handlers.lambda_stream:app --host 127.0.0.1 --port "${PORT:-8080}" \
    --no-access-log --timeout-keep-alive 900
