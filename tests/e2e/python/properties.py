"""Protocol fidelity: the official azure-eventhub SDK reads event hub and partition properties.

Usage: properties.py <connection string with EntityPath>

Prints {"eventhub": {...}, "partitions": {id: {...}}} as JSON on stdout (datetimes as Unix ms).
"""

import json
import sys

from azure.eventhub import EventHubConsumerClient, EventHubProducerClient


def plain(properties):
    return {k: (int(v.timestamp() * 1000) if hasattr(v, "timestamp") else v) for k, v in properties.items()}


def main():
    connection_string = sys.argv[1]
    consumer = EventHubConsumerClient.from_connection_string(connection_string, consumer_group="$Default")
    with consumer:
        hub = consumer.get_eventhub_properties()
        partitions = {p: plain(consumer.get_partition_properties(p)) for p in hub["partition_ids"]}
    producer = EventHubProducerClient.from_connection_string(connection_string)
    with producer:
        producer_view = producer.get_eventhub_properties()
    if producer_view["partition_ids"] != hub["partition_ids"]:
        print("producer and consumer disagree on partition ids", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"eventhub": plain(hub), "partitions": partitions}))


if __name__ == "__main__":
    main()
