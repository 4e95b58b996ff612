"""The official event processor beside hubroute instances: azure-eventhub's asyncio
EventHubConsumerClient with azure-eventhub-checkpointstoreblob-aio's BlobCheckpointStore.

Used by tests/e2e/scale_out.rs to prove that hubroute's ownership and checkpoint blobs are the
official processor's: they split one consumer group's partitions, and each resumes from the other's
checkpoints.

Usage: processor.py <event hub connection string> <storage connection string> <container>
                    <events file> <stop file>

Balances every second with a 5 s ownership expiry (the tests' hubroute settings) and the greedy
strategy, starts partitions without a checkpoint at the earliest event, appends every event it
receives to <events file> as a JSON line {"partition", "sequence_number", "message_id"}, and
checkpoints each batch after writing it. Prints "ready" once started. When <stop file>
appears it closes the client, which releases its partitions, and exits.
"""

import asyncio
import json
import os
import sys

from azure.eventhub.aio import EventHubConsumerClient
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore


async def main(connection_string, storage, container, events_path, stop_path):
    store = BlobCheckpointStore.from_connection_string(storage, container)
    client = EventHubConsumerClient.from_connection_string(
        connection_string,
        consumer_group="$Default",
        checkpoint_store=store,
        load_balancing_interval=1,
        partition_ownership_expiration_interval=5,
        load_balancing_strategy="greedy",
    )
    events = open(events_path, "a", encoding="utf-8")

    async def on_event_batch(context, batch):
        if not batch:
            return
        for event in batch:
            message_id = event.raw_amqp_message.properties.message_id
            if isinstance(message_id, bytes):
                message_id = message_id.decode("utf-8")
            events.write(
                json.dumps(
                    {
                        "partition": context.partition_id,
                        "sequence_number": event.sequence_number,
                        "message_id": str(message_id),
                    }
                )
                + "\n"
            )
        events.flush()
        await context.update_checkpoint(batch[-1])

    receiving = asyncio.create_task(
        client.receive_batch(on_event_batch=on_event_batch, starting_position="-1", max_batch_size=100)
    )
    print("ready", flush=True)
    while not os.path.exists(stop_path):
        if receiving.done():
            receiving.result()
            raise SystemExit("the processor stopped by itself")
        await asyncio.sleep(0.1)
    await client.close()
    await receiving
    events.close()
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
