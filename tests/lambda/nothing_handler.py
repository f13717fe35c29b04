"""A Lambda handler for a Kinesis event that does as little as a handler can: it decodes each
record's data. The protocols benchmark (`pipeline_bench --only protocols`) runs it under
awslambdaric to measure what the Runtime API path costs per record. With LATENCY_OUT set, it
appends `<data after "lat:"> <receive time, ns since the epoch>` for each record whose data
starts with `lat:` (the latency part of the same benchmark)."""

import base64
import os
import time

LATENCY_OUT = os.environ.get("LATENCY_OUT")


def handle(event, context):
    if LATENCY_OUT:
        now = time.time_ns()
        with open(LATENCY_OUT, "a") as out:
            for r in event["Records"]:
                data = base64.b64decode(r["kinesis"]["data"])
                if data.startswith(b"lat:"):
                    out.write(f"{data[4:].decode()} {now}\n")
    else:
        for r in event["Records"]:
            base64.b64decode(r["kinesis"]["data"])
    return {"batchItemFailures": []}
