"""The end-to-end benchmark's workload: the ten IoT Hub route conditions of `routes.toml` over
`hubroute simulate`'s telemetry, feeding three Parquet endpoints.

Each route is written twice, once in IoT Hub's query language (`routes.toml`, for hubroute) and once
as a Python predicate here (for the official-SDK baseline), so both consumers do the same work.
`run.py` compares the row counts each consumer wrote per endpoint, which catches a predicate that
drifted from its condition.
"""

import os
import tomllib

ENDPOINTS = ("lake", "hot", "alerts")


def _body(event):
    return event["body"]


def _num(body, *path):
    value = body
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _text(body, *path):
    value = body
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, str) else None


def _gt(a, b):
    return a is not None and a > b


def _lt(a, b):
    return a is not None and a < b


# One Python predicate per route of routes.toml, over {"body": parsed JSON or None, "props": dict}.
PREDICATES = {
    "everything": lambda e: True,
    "hot-temperature": lambda e: _gt(_num(_body(e), "temperature"), 30),
    "vibration": lambda e: _gt(_num(_body(e), "vibration"), 0.045),
    "low-battery": lambda e: _lt(_num(_body(e), "battery", "level"), 10)
    and isinstance(_body(e), dict) and isinstance(_body(e).get("battery"), dict)
    and _body(e)["battery"].get("charging") is False,
    "alarms": lambda e: e["props"].get("severity") == "high",
    "hot-path-alarms": lambda e: e["props"].get("processingPath") == "hot"
    and _text(_body(e), "status") == "alarm",
    "beta-warnings": lambda e: _text(_body(e), "firmware", "channel") == "beta"
    and _text(_body(e), "status") == "warning",
    "plant-3-line-2": lambda e: _text(_body(e), "location", "site") == "plant-3"
    and _text(_body(e), "location", "line") == "line-2",
    "humid": lambda e: _gt(_num(_body(e), "humidity"), 75) and e["props"].get("messageType") == "telemetry",
    "pressure-out-of-band": lambda e: _lt(_num(_body(e), "pressure"), 985)
    or _gt(_num(_body(e), "pressure"), 1035),
}

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "routes.toml"), "rb") as f:
    ROUTES = tuple(
        (r["name"], r["condition"], r["endpoint"], PREDICATES[r["name"]])
        for r in tomllib.load(f)["routes"]
    )
if set(PREDICATES) != {name for name, _, _, _ in ROUTES}:
    raise SystemExit("routes.toml and the predicates of workload.py name different routes")


def endpoints_of(event):
    """The endpoints one event reaches: each at most once, as IoT Hub fans out."""
    return {endpoint for _, _, endpoint, matches in ROUTES if matches(event)}


def hubroute_config(connection_string, work_dir, listen):
    """A `hubroute run` configuration of the workload, with file bounds a benchmark needs (the
    default `max_file_age` of 300 s would hold the last rows for five minutes)."""
    routes = "\n".join(
        f'[[routes]]\nname = "{name}"\ncondition = "{condition}"\nendpoint = "{endpoint}"\n'
        for name, condition, endpoint, _ in ROUTES
    )
    endpoints = "\n".join(
        f'[[endpoints]]\nsink = {{ type = "parquet", name = "{name}", '
        f'store = {{ kind = "local", root = "{work_dir}/hubroute/{name}" }}, '
        f'max_file_age = "2s", max_file_bytes = 8388608 }}\n'
        for name in ENDPOINTS
    )
    return f"""hub_name = "bench-hub"

[source]
connection_string = "{connection_string}"
start = "earliest"

[checkpoint]
dir = "{work_dir}/hubroute/checkpoints"

[dead_letters]
store = {{ kind = "local", root = "{work_dir}/hubroute" }}

[service]
listen = "{listen}"

{endpoints}
{routes}"""
