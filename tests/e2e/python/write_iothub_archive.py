"""Writes an IoT Hub storage-endpoint archive with independent writers, for `route test --input`.

Usage: write_iothub_archive.py SPEC.json OUT_DIR

SPEC.json is a list of records {"EnqueuedTimeUtc", "Properties", "SystemProperties", "Body"}
with Body in base64. Written to OUT_DIR:

- archive.avro and archive-deflate.avro: fastavro, IoT Hub's schema
  (Microsoft.Azure.Devices.Message), codecs null and deflate;
- archive.json: JSON lines as IoT Hub's JSON encoding writes them (Body itself when contentType is
  application/json, contentEncoding utf-8 and the body parses as JSON, else base64);
- events.json: the same messages as `az iot hub monitor-events --properties all --output json`
  prints them (pretty-printed objects, payload parsed as JSON when the content type says so);
- other-schema.avro: a valid Avro file of another schema, which is not an IoT Hub archive.
"""

import base64
import json
import os
import sys

import fastavro

IOTHUB_SCHEMA = {
    "type": "record",
    "name": "Message",
    "namespace": "Microsoft.Azure.Devices",
    "fields": [
        {"name": "EnqueuedTimeUtc", "type": "string"},
        {"name": "Properties", "type": {"type": "map", "values": "string"}},
        {"name": "SystemProperties", "type": {"type": "map", "values": "string"}},
        {"name": "Body", "type": ["null", "bytes"]},
    ],
}


def json_body(system, body):
    """The body as a JSON value when IoT Hub's JSON encoding would write it so, else None."""
    if system.get("contentType", "").lower() != "application/json":
        return None
    if system.get("contentEncoding", "").lower() != "utf-8":
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def main():
    spec_path, out = sys.argv[1], sys.argv[2]
    with open(spec_path) as f:
        spec = json.load(f)
    records = [
        {
            "EnqueuedTimeUtc": r["EnqueuedTimeUtc"],
            "Properties": r["Properties"],
            "SystemProperties": r["SystemProperties"],
            "Body": base64.b64decode(r["Body"]),
        }
        for r in spec
    ]
    schema = fastavro.parse_schema(IOTHUB_SCHEMA)
    for name, codec in (("archive.avro", "null"), ("archive-deflate.avro", "deflate")):
        with open(os.path.join(out, name), "wb") as f:
            fastavro.writer(f, schema, records, codec=codec)
    with open(os.path.join(out, "archive.json"), "w") as f:
        for r in records:
            parsed = json_body(r["SystemProperties"], r["Body"])
            body = base64.b64encode(r["Body"]).decode() if parsed is None else parsed
            line = dict(r, Body=body)
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
    with open(os.path.join(out, "events.json"), "w") as f:
        f.write("Starting event monitor, use ctrl-c to stop...\n")
        for r in records:
            system = r["SystemProperties"]
            parsed = json_body(system, r["Body"])
            event = {
                "event": {
                    "origin": system.get("connectionDeviceId", ""),
                    "module": system.get("connectionModuleId", ""),
                    "interface": "",
                    "component": "",
                    "payload": r["Body"].decode("utf-8", "replace") if parsed is None else parsed,
                    "annotations": {
                        "iothub-connection-device-id": system.get("connectionDeviceId"),
                        "iothub-message-source": "Telemetry",
                    },
                    "properties": {
                        "system": {
                            k: v
                            for k, v in (
                                ("message_id", system.get("messageId")),
                                ("content_type", system.get("contentType")),
                                ("content_encoding", system.get("contentEncoding")),
                            )
                            if v is not None
                        },
                        "application": r["Properties"],
                    },
                }
            }
            f.write(json.dumps(event, indent=4) + "\n")
    other = fastavro.parse_schema(
        {"type": "record", "name": "Reading", "fields": [{"name": "value", "type": "double"}]}
    )
    with open(os.path.join(out, "other-schema.avro"), "wb") as f:
        fastavro.writer(f, other, [{"value": 1.5}, {"value": 2.5}])
    print(json.dumps({"records": len(records)}))


if __name__ == "__main__":
    main()
