"""pageview-counter in Python: the same record processor as the Rust example, to show that
an app in any language with gRPC can sit behind the kinesis-worker sidecar.

Counts pageviews per client id from JSON records, adds the counts to a DynamoDB table every
FLUSH_INTERVAL_MS, and checkpoints only the records whose counts were written. Malformed
records are counted, logged and skipped.

Settings (environment): APP_ADDRESS (unix:///var/run/kinesis/processor.sock), COUNTS_TABLE
(pageview-counts), FLUSH_INTERVAL_MS (10000), DYNAMODB_ENDPOINT (optional), PROTO_DIR (the
folder holding kinesis_operator/processor/v1/processor.proto; default ../../proto from here).
AWS credentials and region come from boto3's standard chain.
"""

import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from concurrent import futures

import boto3
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_tools import protoc

PROTO = "kinesis_operator/processor/v1/processor.proto"
log = logging.getLogger("pageview-counter")


class RefuseAfterLease(grpc.ServerInterceptor):
    """Refuses a call that reached the app after its lease's validity
    (`kinesis-lease-valid-until-ms`, ms since the epoch): its worker was paused after its lease
    check, and the shard may be another worker's by now (docs/PROCESSOR.md, "Fencing")."""

    def intercept_service(self, continuation, details):
        for key, value in details.invocation_metadata or ():
            if key != "kinesis-lease-valid-until-ms":
                continue
            try:
                late = time.time() * 1000 > int(value)
            except ValueError:
                late = False
            if late:
                def refuse(_request, context):
                    context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                  "the call's lease expired before it reached the app")
                return grpc.unary_unary_rpc_method_handler(refuse)
        return continuation(details)


def load_stubs(proto_dir):
    """Generates the Python stubs of the contract into a temporary folder and imports them."""
    out = tempfile.mkdtemp(prefix="kinesis-processor-")
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}",
                      f"--grpc_python_out={out}", os.path.join(proto_dir, PROTO)])
    if rc != 0:
        sys.exit(f"cannot compile {os.path.join(proto_dir, PROTO)} (set PROTO_DIR)")
    sys.path.insert(0, out)
    from kinesis_operator.processor.v1 import processor_pb2, processor_pb2_grpc
    return processor_pb2, processor_pb2_grpc


class ShardCounts:
    def __init__(self):
        self.counts = {}
        self.last = None  # (sequence_number, sub_sequence_number) of the last record counted
        self.written = None  # the last record whose count is written
        self.reported = None  # the last position handed to the worker as a checkpoint
        self.last_flush = None
        self.malformed = 0
        self.lock = threading.Lock()


def make_counter(pb, pb_grpc, dynamodb, table, flush_interval):
    class Counter(pb_grpc.RecordProcessorServicer):
        def __init__(self):
            self.shards = {}
            self.shards_lock = threading.Lock()

        def shard(self, shard_id):
            with self.shards_lock:
                return self.shards.setdefault(shard_id, ShardCounts())

        def forget(self, shard_id):
            with self.shards_lock:
                self.shards.pop(shard_id, None)

        def flush(self, shard_id, s):
            """Adds the counts to the table; raises on failure (nothing is checkpointed)."""
            for client, n in s.counts.items():
                dynamodb.update_item(
                    TableName=table,
                    Key={"client_id": {"S": client}},
                    UpdateExpression="ADD pageviews :n",
                    ExpressionAttributeValues={":n": {"N": str(n)}},
                )
            if s.counts:
                log.info("shard %s: counts of %d clients written", shard_id, len(s.counts))
            s.counts = {}
            s.written = s.last
            s.last_flush = time.monotonic()

        def flush_due(self):
            """Writes the counts of every shard whose interval has passed (the timer)."""
            with self.shards_lock:
                shards = list(self.shards.items())
            for shard_id, s in shards:
                with s.lock:
                    due = s.last_flush is None or time.monotonic() - s.last_flush >= flush_interval
                    if due and s.counts:
                        try:
                            self.flush(shard_id, s)
                        except Exception as e:  # retried at the next round
                            log.warning("shard %s: writing counts failed: %s", shard_id, e)

        def Initialize(self, request, context):
            log.info("counting shard %s", request.shard_id)
            self.forget(request.shard_id)
            return pb.InitializeResponse()

        def ProcessRecords(self, request, context):
            s = self.shard(request.shard_id)
            with s.lock:
                for rec in request.records:
                    try:
                        client = json.loads(rec.data)["client_id"]
                        s.counts[client] = s.counts.get(client, 0) + 1
                    except (ValueError, KeyError, TypeError) as e:
                        s.malformed += 1
                        log.warning("shard %s: record %s is not a pageview (%s); skipped",
                                    request.shard_id, rec.sequence_number, e)
                if request.records:
                    last = request.records[-1]
                    s.last = (last.sequence_number, last.sub_sequence_number)
                due = s.last_flush is None or time.monotonic() - s.last_flush >= flush_interval
                if due:
                    try:
                        self.flush(request.shard_id, s)
                    except Exception as e:  # retried later; nothing new checkpointed
                        log.warning("shard %s: writing counts failed: %s", request.shard_id, e)
                # Checkpoint up to the last record whose count is written (here or by the timer).
                if s.written is None or s.written == s.reported:
                    return pb.ProcessRecordsResponse()
                s.reported = s.written
                up_to = pb.RecordPosition(sequence_number=s.written[0],
                                          sub_sequence_number=s.written[1])
                return pb.ProcessRecordsResponse(checkpoint=pb.Checkpoint(up_to=up_to))

        def LeaseLost(self, request, context):
            log.info("shard %s: lease lost, unwritten counts dropped", request.shard_id)
            self.forget(request.shard_id)
            return pb.LeaseLostResponse()

        def ShardEnded(self, request, context):
            s = self.shard(request.shard_id)
            with s.lock:
                try:
                    self.flush(request.shard_id, s)
                except Exception as e:
                    # An error makes the worker retry; SHARD_END waits for the counts.
                    context.abort(grpc.StatusCode.UNAVAILABLE, f"writing counts: {e}")
            self.forget(request.shard_id)
            log.info("shard %s ended; children %s", request.shard_id, list(request.child_shard_ids))
            return pb.ShardEndedResponse()

        def ShutdownRequested(self, request, context):
            s = self.shard(request.shard_id)
            with s.lock:
                try:
                    self.flush(request.shard_id, s)
                    written = True
                except Exception as e:
                    log.warning("shard %s: writing counts failed at hand-over: %s", request.shard_id, e)
                    written = False
            self.forget(request.shard_id)
            if written:
                return pb.ShutdownRequestedResponse(
                    checkpoint=pb.Checkpoint(all_delivered=pb.AllDelivered()))
            return pb.ShutdownRequestedResponse()

    return Counter()


def ensure_table(dynamodb, table):
    try:
        dynamodb.describe_table(TableName=table)
        return
    except dynamodb.exceptions.ResourceNotFoundException:
        pass
    try:
        dynamodb.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "client_id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "client_id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
    except dynamodb.exceptions.ResourceInUseException:
        pass  # another replica created it


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    here = os.path.dirname(os.path.abspath(__file__))
    proto_dir = os.environ.get("PROTO_DIR", os.path.join(here, "..", "..", "proto"))
    address = os.environ.get("APP_ADDRESS", "unix:///var/run/kinesis/processor.sock")
    table = os.environ.get("COUNTS_TABLE", "pageview-counts")
    flush_interval = int(os.environ.get("FLUSH_INTERVAL_MS", "10000")) / 1000.0
    pb, pb_grpc = load_stubs(proto_dir)

    kwargs = {}
    if os.environ.get("DYNAMODB_ENDPOINT"):
        kwargs["endpoint_url"] = os.environ["DYNAMODB_ENDPOINT"]
    dynamodb = boto3.client("dynamodb", **kwargs)
    ensure_table(dynamodb, table)

    # A stale socket file from an earlier run would make the bind fail.
    if address.startswith("unix://"):
        path = address[len("unix://"):]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.exists(path):
            os.remove(path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32),
                         interceptors=[RefuseAfterLease()],
                         options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    counter = make_counter(pb, pb_grpc, dynamodb, table, flush_interval)
    pb_grpc.add_RecordProcessorServicer_to_server(counter, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(address) == 0:
        sys.exit(f"cannot listen on {address}")
    server.start()
    if address.startswith("unix://"):
        os.chmod(address[len("unix://"):], 0o666)  # the worker runs as another user
    log.info("pageview-counter (Python) serving on %s, counts in %s", address, table)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # Counts reach the table on time even when a shard goes quiet; the checkpoint follows
    # with the shard's next batch (or its hand-over).
    while not stop.wait(max(flush_interval, 0.1)):
        counter.flush_due()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
