"""Protocol fidelity: the official azure-eventhub SDK round-trips events through hubroute's emulator.

Usage: roundtrip.py <connection string with EntityPath> <event count>

Sends <count> events with application properties and partition keys (EventDataBatch), then reads
every partition back from the earliest position and from a sequence number, an offset and an
enqueued time, checking counts, order and properties. Prints a JSON summary on stdout; any mismatch
exits non-zero with the reason on stderr.
"""

import json
import sys
import threading
import time

from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient

DEVICES = 16
RECEIVE_TIMEOUT_S = 40


def fail(message):
    print(f"roundtrip.py: {message}", file=sys.stderr)
    sys.exit(1)


def send(connection_string, count):
    producer = EventHubProducerClient.from_connection_string(connection_string, retry_total=1)
    with producer:
        per_device = {}
        for index in range(count):
            per_device.setdefault(f"device-{index % DEVICES:02}", []).append(index)
        for device, indexes in per_device.items():
            batch = producer.create_batch(partition_key=device)
            for index in indexes:
                event = EventData(json.dumps({"index": index, "temperature": 20 + index % 10}))
                event.content_type = "application/json"
                event.properties = {"index": index, "device": device, "severity": "high" if index % 7 == 0 else "low"}
                try:
                    batch.add(event)
                except ValueError:
                    producer.send_batch(batch, timeout=30)
                    batch = producer.create_batch(partition_key=device)
                    batch.add(event)
            producer.send_batch(batch, timeout=30)


def receive(connection_string, partition, expected, **position):
    """Reads exactly `expected` events from one partition, or fails after a timeout."""
    client = EventHubConsumerClient.from_connection_string(connection_string, consumer_group="$Default")
    events, done = [], threading.Event()

    def on_batch(_context, batch):
        events.extend(batch)
        if len(events) >= expected:
            done.set()

    worker = threading.Thread(
        target=client.receive_batch,
        kwargs=dict(on_event_batch=on_batch, partition_id=partition, max_batch_size=1000, prefetch=1000,
                    max_wait_time=1, **position),
        daemon=True,
    )
    worker.start()
    if expected > 0:
        done.wait(RECEIVE_TIMEOUT_S)
    # Let a few more deliveries arrive so surplus events are caught, not hidden by an early close.
    time.sleep(0.3)
    client.close()
    worker.join(10)
    if len(events) != expected:
        fail(f"partition {partition} from {position}: received {len(events)} events, expected {expected}")
    return events


def main():
    connection_string, count = sys.argv[1], int(sys.argv[2])
    started = time.monotonic()
    send(connection_string, count)
    sent_s = time.monotonic() - started

    consumer = EventHubConsumerClient.from_connection_string(connection_string, consumer_group="$Default")
    with consumer:
        partition_ids = consumer.get_partition_ids()
        properties = {p: consumer.get_partition_properties(p) for p in partition_ids}
    stored = {p: (0 if props["is_empty"] else props["last_enqueued_sequence_number"] - props["beginning_sequence_number"] + 1)
              for p, props in properties.items()}
    if sum(stored.values()) != count:
        fail(f"partition properties account for {stored} events, expected {count} in total")

    seen_indexes, device_partition = set(), {}
    by_partition = {}
    for partition in partition_ids:
        events = receive(connection_string, partition, stored[partition], starting_position="-1")
        sequence_numbers = [e.sequence_number for e in events]
        if sequence_numbers != sorted(sequence_numbers) or len(set(sequence_numbers)) != len(events):
            fail(f"partition {partition}: sequence numbers not strictly increasing")
        last_index = {}
        for event in events:
            props = {k.decode(): (v.decode() if isinstance(v, bytes) else v) for k, v in event.properties.items()}
            body = json.loads(event.body_as_str())
            index, device = props["index"], props["device"]
            if body["index"] != index or index % DEVICES != int(device.split("-")[1]):
                fail(f"event {index}: body or properties do not match: {body} {props}")
            if props["severity"] != ("high" if index % 7 == 0 else "low"):
                fail(f"event {index}: severity {props['severity']!r}")
            # The SDK returns annotation strings as the raw UTF-8 bytes (EventData.partition_key: bytes).
            partition_key = event.partition_key
            if isinstance(partition_key, bytes):
                partition_key = partition_key.decode()
            if partition_key != device:
                fail(f"event {index}: partition key {event.partition_key!r}, expected {device!r}")
            if event.content_type != "application/json":
                fail(f"event {index}: content type {event.content_type!r}")
            if device_partition.setdefault(device, partition) != partition:
                fail(f"device {device} spread over partitions {device_partition[device]} and {partition}")
            if index <= last_index.get(device, -1):
                fail(f"device {device}: event {index} after {last_index[device]} (order lost)")
            last_index[device] = index
            if index in seen_indexes:
                fail(f"event {index} received twice")
            seen_indexes.add(index)
        by_partition[partition] = events
    if len(seen_indexes) != count:
        fail(f"received {len(seen_indexes)} distinct events, expected {count}")

    # Start positions, on the fullest partition: after a sequence number, after an offset, after a time.
    partition = max(by_partition, key=lambda p: len(by_partition[p]))
    events = by_partition[partition]
    pivot = events[len(events) // 3]
    positions = {}
    after_seq = receive(connection_string, partition, len(events) - len(events) // 3 - 1,
                        starting_position=pivot.sequence_number, starting_position_inclusive=False)
    if after_seq[0].sequence_number != pivot.sequence_number + 1:
        fail(f"after sequence number {pivot.sequence_number}: first event is {after_seq[0].sequence_number}")
    positions["sequence_number"] = len(after_seq)
    inclusive = receive(connection_string, partition, len(events) - len(events) // 3,
                        starting_position=pivot.sequence_number, starting_position_inclusive=True)
    if inclusive[0].sequence_number != pivot.sequence_number:
        fail("inclusive sequence number start did not begin at the pivot")
    positions["sequence_number_inclusive"] = len(inclusive)
    after_offset = receive(connection_string, partition, len(events) - len(events) // 3 - 1,
                           starting_position=str(pivot.offset))
    if after_offset[0].sequence_number != pivot.sequence_number + 1:
        fail(f"after offset {pivot.offset}: first event is {after_offset[0].sequence_number}")
    positions["offset"] = len(after_offset)
    later = [e for e in events if e.enqueued_time > pivot.enqueued_time]
    after_time = receive(connection_string, partition, len(later), starting_position=pivot.enqueued_time)
    if [e.sequence_number for e in after_time] != [e.sequence_number for e in later]:
        fail("after enqueued time: wrong events")
    positions["enqueued_time"] = len(after_time)

    print(json.dumps({
        "sent": count,
        "received": len(seen_indexes),
        "partitions": {p: len(e) for p, e in by_partition.items()},
        "positions": positions,
        "send_seconds": round(sent_s, 2),
        "total_seconds": round(time.monotonic() - started, 2),
    }))


if __name__ == "__main__":
    main()
