"""The baseline of the end-to-end benchmark: the official `azure-eventhub` consumer doing hubroute's
job by hand. It receives every partition, parses each JSON body, evaluates the workload's routes and
writes each endpoint's matches to Parquet with pyarrow, then exits once `--events` events arrived.

Usage: sdk_consumer.py --connection-string CS --events N --out DIR
Prints one JSON line: {"events": N, "rows": {"lake": .., "hot": .., "alerts": ..}}.
"""

import argparse
import json
import os
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
from azure.eventhub import EventHubConsumerClient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workload import ENDPOINTS, endpoints_of  # noqa: E402

SCHEMA = pa.schema([
    ("partition", pa.string()),
    ("sequence_number", pa.int64()),
    ("offset", pa.string()),
    ("enqueued_time", pa.timestamp("ms", tz="UTC")),
    ("message_id", pa.string()),
    ("properties", pa.string()),
    ("body", pa.binary()),
])
FLUSH_ROWS = 8192


class EndpointWriter:
    """Buffers one endpoint's rows and writes them as row groups of one Parquet file per partition
    thread (pyarrow writers are not shared across threads)."""

    def __init__(self, out, endpoint, partition):
        os.makedirs(os.path.join(out, endpoint), exist_ok=True)
        self.writer = pq.ParquetWriter(
            os.path.join(out, endpoint, f"{partition}.parquet"), SCHEMA, compression="zstd")
        self.rows = {name: [] for name in SCHEMA.names}
        self.count = 0

    def add(self, row):
        for name, value in zip(SCHEMA.names, row):
            self.rows[name].append(value)
        self.count += 1
        if len(self.rows["body"]) >= FLUSH_ROWS:
            self.flush()

    def flush(self):
        if self.rows["body"]:
            self.writer.write_table(pa.table(self.rows, schema=SCHEMA))
            self.rows = {name: [] for name in SCHEMA.names}

    def close(self):
        self.flush()
        self.writer.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connection-string", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    client = EventHubConsumerClient.from_connection_string(
        args.connection_string, consumer_group="$Default")
    writers = {}
    lock = threading.Lock()
    received = [0]
    done = threading.Event()

    def on_batch(context, events):
        partition = context.partition_id
        mine = writers.setdefault(
            partition, {e: EndpointWriter(args.out, e, partition) for e in ENDPOINTS})
        for event in events:
            raw = b"".join(event.body) if not isinstance(event.body, bytes) else event.body
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            props = {
                (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in (event.properties or {}).items()
            }
            routed = endpoints_of({"body": body, "props": props})
            if routed:
                row = (partition, event.sequence_number, str(event.offset), event.enqueued_time,
                       event.message_id and str(event.message_id), json.dumps(props), raw)
                for endpoint in routed:
                    mine[endpoint].add(row)
        with lock:
            received[0] += len(events)
            if received[0] >= args.events:
                done.set()

    thread = threading.Thread(
        target=client.receive_batch,
        kwargs={"on_event_batch": on_batch, "starting_position": "-1", "max_batch_size": 300},
        daemon=True)
    thread.start()
    done.wait()
    client.close()
    thread.join(timeout=30)
    rows = {e: 0 for e in ENDPOINTS}
    for per_partition in writers.values():
        for endpoint, writer in per_partition.items():
            writer.close()
            rows[endpoint] += writer.count
    print(json.dumps({"events": received[0], "rows": rows}))


if __name__ == "__main__":
    main()
