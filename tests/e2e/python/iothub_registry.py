"""Drives hubroute's emulator with the official IoT Hub service SDK (azure-iot-hub).

Usage: iothub_registry.py <service connection string> <CA certificate PEM> <device count>

The SDK only speaks HTTPS to `https://{HostName}`, so the emulator runs with `--tls-cert` and the
certificate is trusted through REQUESTS_CA_BUNDLE (honoured by the `requests` session under msrest).
Creates devices with generated keys, tags their twins (etag-checked), sets desired properties,
adds a module with a twin, reads everything back, pages the twin query, deletes one device, and
prints a JSON summary for the Rust test to check.
"""

import json
import os
import sys

connection_string, ca_file, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.environ["REQUESTS_CA_BUNDLE"] = ca_file

from azure.iot.hub import IoTHubRegistryManager  # noqa: E402
from azure.iot.hub.models import QuerySpecification, Twin, TwinProperties  # noqa: E402

registry = IoTHubRegistryManager.from_connection_string(connection_string)
summary = {"devices": [], "query_pages": [], "errors": []}

for n in range(count):
    device_id = f"sdk-device-{n}"
    device = registry.create_device_with_sas(device_id, None, None, "enabled")
    assert device.authentication.symmetric_key.primary_key, "the hub generates keys"
    twin = registry.get_twin(device_id)
    patch = Twin(
        tags={"site": f"plant-{n % 3 + 1}", "owner": "sdk"},
        properties=TwinProperties(desired={"telemetryConfig": {"sendFrequency": f"{n + 1}s"}}),
    )
    updated = registry.update_twin(device_id, patch, twin.etag)
    summary["devices"].append(
        {
            "id": device_id,
            "primary_key": device.authentication.symmetric_key.primary_key,
            "generation_id": device.generation_id,
            "etag_changed": updated.etag != twin.etag,
            "version": updated.version,
            "tags": updated.tags,
            "desired_frequency": updated.properties.desired["telemetryConfig"]["sendFrequency"],
            "desired_version": updated.properties.desired["$version"],
        }
    )

# A stale etag is refused with 412, as IoT Hub does.
try:
    registry.update_twin("sdk-device-0", Twin(tags={"x": 1}), "AAAAAAAAAAA=")
    summary["errors"].append("a stale etag was accepted")
except Exception as error:  # msrest.exceptions.HttpOperationError
    summary["stale_etag_status"] = error.response.status_code

module = registry.create_module_with_sas("sdk-device-0", "filter", None, None, None)
module_twin = registry.update_module_twin(
    "sdk-device-0", "filter", Twin(tags={"role": "edge"}), registry.get_module_twin("sdk-device-0", "filter").etag
)
summary["module"] = {
    "id": module.module_id,
    "key": module.authentication.symmetric_key.primary_key,
    "tags": module_twin.tags,
    "device": module_twin.device_id,
}

continuation = None
while True:
    page = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices"), continuation, 2)
    summary["query_pages"].append(sorted(twin.device_id for twin in page.items))
    continuation = page.continuation_token
    if not continuation:
        break
modules = registry.query_iot_hub(QuerySpecification(query="SELECT * FROM devices.modules"))
summary["module_query"] = [[twin.device_id, twin.module_id] for twin in modules.items]

registry.delete_device(f"sdk-device-{count - 1}")
try:
    registry.get_device(f"sdk-device-{count - 1}")
    summary["errors"].append("a deleted device is still there")
except Exception as error:
    summary["deleted_status"] = error.response.status_code

print(json.dumps(summary))
