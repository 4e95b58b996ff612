"""Reads IoT Hub storage-endpoint files with independent readers and prints them as JSON.

Usage: read_storage_files.py (avro|json) FILE...

Avro files (null or deflate codec) are read with fastavro; JSON files with the standard library, one
record per line. For each file it prints the header facts an Avro reader sees (codec, schema text,
metadata key order) and every record; bytes bodies are printed as base64 so the output is JSON.
"""

import base64
import json
import sys

import fastavro


def read_avro(path):
    with open(path, "rb") as f:
        reader = fastavro.reader(f)
        records = []
        for record in reader:
            body = record["Body"]
            records.append(
                {
                    "EnqueuedTimeUtc": record["EnqueuedTimeUtc"],
                    "Properties": record["Properties"],
                    "SystemProperties": record["SystemProperties"],
                    "Body": None if body is None else base64.b64encode(body).decode(),
                }
            )
        return {
            "path": path,
            "codec": reader.codec,
            "metadata_keys": list(reader.metadata.keys()),
            "schema_text": reader.metadata["avro.schema"],
            "avro_codec": reader.metadata.get("avro.codec"),
            "schema_name": reader.writer_schema["name"],
            "records": records,
        }


def read_json(path):
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    lines = text.split("\n")
    if lines[-1] != "":
        raise SystemExit(f"{path}: the last record does not end with a newline")
    records = [json.loads(line) for line in lines[:-1]]
    for record in records:
        if list(record.keys()) != ["EnqueuedTimeUtc", "Properties", "SystemProperties", "Body"]:
            raise SystemExit(f"{path}: unexpected fields {list(record.keys())}")
    return {"path": path, "records": records}


def main():
    encoding, paths = sys.argv[1], sys.argv[2:]
    read = {"avro": read_avro, "json": read_json}[encoding]
    print(json.dumps([read(path) for path in paths]))


if __name__ == "__main__":
    main()
