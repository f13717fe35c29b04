"""A KCL MultiLang record processor (amazon-kclpy's public API) that does as little as an app
can: it decodes each record's data and checkpoints each batch. The protocols benchmark
(`pipeline_bench --only protocols`) runs it behind kinesis-bridge to measure what the bridge
and the MultiLang protocol cost per record. With LATENCY_OUT set, it appends
`<data after "lat:"> <receive time, ns since the epoch>` for each record whose data starts
with `lat:` (the latency part of the same benchmark)."""

import os
import time

from amazon_kclpy import kcl
from amazon_kclpy.v3 import processor

LATENCY_OUT = os.environ.get("LATENCY_OUT")


class Nothing(processor.RecordProcessorBase):
    def initialize(self, initialize_input):
        pass

    def process_records(self, process_records_input):
        if LATENCY_OUT:
            now = time.time_ns()
            with open(LATENCY_OUT, "a") as out:
                for record in process_records_input.records:
                    data = record.binary_data
                    if data.startswith(b"lat:"):
                        out.write(f"{data[4:].decode()} {now}\n")
        else:
            for record in process_records_input.records:
                record.binary_data
        process_records_input.checkpointer.checkpoint()

    def lease_lost(self, lease_lost_input):
        pass

    def shard_ended(self, shard_ended_input):
        shard_ended_input.checkpointer.checkpoint()

    def shutdown_requested(self, shutdown_requested_input):
        shutdown_requested_input.checkpointer.checkpoint()


if __name__ == "__main__":
    kcl.KCLProcess(Nothing()).run()
