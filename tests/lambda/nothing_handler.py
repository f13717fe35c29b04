"""A Lambda handler for a Kinesis event that does as little as a handler can: it decodes each
record's data. The protocols benchmark (`pipeline_bench --only protocols`) runs it under
awslambdaric to measure what the Runtime API path costs per record."""

import base64


def handle(event, context):
    for r in event["Records"]:
        base64.b64decode(r["kinesis"]["data"])
    return {"batchItemFailures": []}
