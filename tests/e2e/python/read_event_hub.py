"""Fidelity of the eventhubs endpoint: the official azure-eventhub consumer reads what hubroute published.

Usage: read_event_hub.py <connection string with EntityPath> <expected event count>

Reads every partition from the earliest event until <count> events arrived (then a little longer, so
surplus events are caught), and prints them as a JSON list on stdout, each with its partition,
sequence number, body (UTF-8 text), application properties and system properties as the SDK shows
them. Values keep their type: {"type": "int" | "float" | "bool" | "str" | "bytes" | "uuid" |
"datetime" | "none", "value": ...}. Exits non-zero with the reason on stderr when fewer arrive.
"""

import base64
import json
import sys
import threading
import time
import uuid

from azure.eventhub import EventHubConsumerClient

RECEIVE_TIMEOUT_S = 60


def fail(message):
    print(f"read_event_hub.py: {message}", file=sys.stderr)
    sys.exit(1)


def typed(value):
    if value is None:
        return {"type": "none", "value": None}
    if isinstance(value, bool):
        return {"type": "bool", "value": value}
    if isinstance(value, int):
        return {"type": "int", "value": value}
    if isinstance(value, float):
        return {"type": "float", "value": value}
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return {"type": "bytes", "value": raw.decode("utf-8")}
        except UnicodeDecodeError:
            return {"type": "bytes", "value": base64.b64encode(raw).decode("ascii")}
    if isinstance(value, uuid.UUID):
        return {"type": "uuid", "value": str(value)}
    if hasattr(value, "timestamp"):
        return {"type": "datetime", "value": int(value.timestamp() * 1000)}
    return {"type": "str", "value": str(value)}


def key(name):
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)


def main():
    connection_string, expected = sys.argv[1], int(sys.argv[2])
    client = EventHubConsumerClient.from_connection_string(connection_string, consumer_group="$Default")
    events, done, lock = [], threading.Event(), threading.Lock()

    def on_batch(context, batch):
        with lock:
            for event in batch:
                events.append({
                    "partition": context.partition_id,
                    "sequence_number": event.sequence_number,
                    "body": event.body_as_str(encoding="utf-8"),
                    "properties": {key(k): typed(v) for k, v in (event.properties or {}).items()},
                    "system_properties": {key(k): typed(v) for k, v in event.system_properties.items()},
                })
            if len(events) >= expected:
                done.set()

    worker = threading.Thread(
        target=client.receive_batch,
        kwargs=dict(on_event_batch=on_batch, starting_position="-1", max_batch_size=500, prefetch=500,
                    max_wait_time=1),
        daemon=True,
    )
    worker.start()
    done.wait(RECEIVE_TIMEOUT_S)
    time.sleep(1.0)
    client.close()
    worker.join(10)
    if len(events) < expected:
        fail(f"received {len(events)} events, expected at least {expected}")
    print(json.dumps(events))


if __name__ == "__main__":
    main()
