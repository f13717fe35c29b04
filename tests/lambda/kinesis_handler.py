"""A Lambda handler for a Kinesis event source, as a user writes it: nothing in it knows about
kinesis-operator. The tests run it with the real runtime interface client (PyPI awslambdaric):
`python -m awslambdaric kinesis_handler.handle`.

It prints one JSON line per invocation (what it received and what it answered), so the test
can account for every record. It fails some records once, to exercise the partial batch
response and the error path:
- the first time it sees a record whose index is 5 modulo 13, it reports it in
  batchItemFailures (the records before it succeed; it and the rest come again);
- the first time it sees `key-0:17`, it raises (the whole batch comes again).
"""

import base64
import json
import os

_failed_once = set()


def handle(event, context):
    records = event["Records"]
    received = []
    failure = None
    raised = None
    for r in records:
        k = r["kinesis"]
        data = base64.b64decode(k["data"]).decode()
        received.append({"key": k["partitionKey"], "seq": k["sequenceNumber"], "data": data})
        assert r["eventID"] == r["eventID"].split(":")[0] + ":" + k["sequenceNumber"]
        assert r["eventSource"] == "aws:kinesis" and r["eventName"] == "aws:kinesis:record"
        assert isinstance(k["approximateArrivalTimestamp"], float)
        index = int(data.split(":")[1])
        if failure is None and raised is None and data not in _failed_once:
            if data == "key-0:17":
                _failed_once.add(data)
                raised = data
            elif index % 13 == 5:
                _failed_once.add(data)
                failure = k["sequenceNumber"]
    print(json.dumps({
        "request": context.aws_request_id,
        "function": context.invoked_function_arn,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "handler_env": os.environ.get("_HANDLER"),
        "received": received,
        "failed_from": failure,
        "raised": raised,
    }), flush=True)
    if raised is not None:
        raise RuntimeError("cannot process " + raised)
    if failure is not None:
        return {"batchItemFailures": [{"itemIdentifier": failure}]}
    return {"batchItemFailures": []}
