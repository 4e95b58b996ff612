"""Checkpoint interoperability with the official azure-eventhub-checkpointstoreblob package.

Used by tests/e2e/source.rs to prove that hubroute's ObjectStoreCheckpointStore writes blobs the
official SDK reads, and reads the blobs the SDK writes. Prints JSON on stdout.

  checkpoint_store.py create <conn> <container>
  checkpoint_store.py list   <conn> <container> <fqns> <event hub> <consumer group>
  checkpoint_store.py update <conn> <container> <fqns> <event hub> <consumer group> <partition> <offset> <seq>
"""

import json
import sys

from azure.core.exceptions import ResourceExistsError
from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore
# The package vendors the storage client it uses; creating the container with it avoids another dependency.
from azure.eventhub.extensions.checkpointstoreblob._vendor.storage.blob import BlobServiceClient


def main(argv):
    command, connection_string, container = argv[1], argv[2], argv[3]
    if command == "create":
        try:
            BlobServiceClient.from_connection_string(connection_string).create_container(container)
        except ResourceExistsError:
            pass
        print(json.dumps({"created": container}))
        return
    store = BlobCheckpointStore.from_connection_string(connection_string, container)
    fqns, event_hub, consumer_group = argv[4], argv[5], argv[6]
    if command == "list":
        checkpoints = store.list_checkpoints(fqns, event_hub, consumer_group)
        rows = [
            {"partition_id": c["partition_id"], "offset": c["offset"], "sequence_number": c["sequence_number"]}
            for c in checkpoints
        ]
        print(json.dumps(sorted(rows, key=lambda r: r["partition_id"])))
    elif command == "update":
        partition, offset, sequence_number = argv[7], argv[8], int(argv[9])
        store.update_checkpoint(
            {
                "fully_qualified_namespace": fqns,
                "eventhub_name": event_hub,
                "consumer_group": consumer_group,
                "partition_id": partition,
                "offset": offset,
                "sequence_number": sequence_number,
            }
        )
        print(json.dumps({"updated": partition}))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv)
