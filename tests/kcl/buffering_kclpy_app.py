"""A KCL MultiLang record processor (amazon-kclpy's API) that buffers: it keeps each batch's
records in memory and only every third batch writes them to $OUT (one line per record:
`partitionKey sequenceNumber data`) and then checkpoints. A legitimate KCL pattern (flush,
then checkpoint), and the one that loses records if a process that replaces a failed one
carries on after the failed batch instead of starting over from the checkpoint."""

import os

from amazon_kclpy import kcl
from amazon_kclpy.v3 import processor

OUT = os.environ["OUT"]


class Buffering(processor.RecordProcessorBase):
    def __init__(self):
        self.buffer = []
        self.batches = 0

    def initialize(self, initialize_input):
        self.buffer = []
        self.batches = 0

    def flush(self, checkpointer):
        with open(OUT, "a") as out:
            for r in self.buffer:
                out.write("%s %s %s\n" % (r.partition_key, r.sequence_number, r.binary_data.decode()))
        self.buffer = []
        checkpointer.checkpoint()

    def process_records(self, process_records_input):
        self.buffer.extend(process_records_input.records)
        self.batches += 1
        if self.batches % 3 == 0:
            self.flush(process_records_input.checkpointer)

    def lease_lost(self, lease_lost_input):
        pass

    def shard_ended(self, shard_ended_input):
        self.flush(shard_ended_input.checkpointer)

    def shutdown_requested(self, shutdown_requested_input):
        self.flush(shutdown_requested_input.checkpointer)


if __name__ == "__main__":
    kcl.KCLProcess(Buffering()).run()
