#!/usr/bin/env python3
"""End-to-end benchmark: `hubroute emulator` → `hubroute run` (10 routes, 3 Parquet endpoints), and
the official `azure-eventhub` Python consumer doing the same job on the same backlog.

    cargo build --release
    .venv/bin/python benches/e2e/run.py                 # 1 M events, 4 partitions, then the SDK
    .venv/bin/python benches/e2e/run.py --mixed         # 5 % non-JSON, 1 % 200 KB, 0.1 % empty bodies
    .venv/bin/python benches/e2e/run.py --events 200000 --partitions 32 --no-sdk

Every process runs on this machine and shares its cores. The emulator is filled first (`hubroute
simulate --max`); then the engine starts, reads every partition from the earliest event, and gets
SIGTERM once it has routed every event, which drains and commits the last Parquet files. Wall time is
from its start to its exit. CPU time and peak RSS come from the kernel (`wait4` for the engine,
`/proc` for the emulator, whose CPU is counted over the engine's run only). Row counts per endpoint
are read back from the Parquet files and must match between hubroute and the SDK baseline.
"""

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from workload import ENDPOINTS, hubroute_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TICKS = os.sysconf("SC_CLK_TCK")


def default_binary():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "hubroute")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_sum(url, name):
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def parquet_rows(directory):
    import pyarrow.parquet as pq
    rows = 0
    for dirpath, _, files in os.walk(directory):
        for name in files:
            if name.endswith(".parquet"):
                rows += pq.ParquetFile(os.path.join(dirpath, name)).metadata.num_rows
    return rows


def run_waited(command, **kwargs):
    """Runs `command` to its end; returns (wall s, CPU s, peak RSS MB, stdout)."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, **kwargs)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{command[0]} failed with {status}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.decode()


def start_emulator(binary, partitions, work):
    amqp, http = free_port(), free_port()
    emulator = subprocess.Popen(
        [binary, "emulator", "--listen", f"127.0.0.1:{amqp}", "--http", f"127.0.0.1:{http}",
         "--partitions", str(partitions)],
        stdout=subprocess.PIPE, stderr=open(os.path.join(work, "emulator.log"), "w"), text=True)
    line = emulator.stdout.readline().strip()
    if not line.startswith("Endpoint="):
        sys.exit(f"the emulator did not print a connection string: {line!r}")
    return emulator, line


def engine_process(pid, binary):
    """The engine's own process: `pid`, or under a profiler that forks (`perf record`) its
    descendant running `binary`, which must get the SIGTERM: the profiler would stop on it."""
    queue = [pid]
    while queue:
        candidate = queue.pop(0)
        try:
            if os.path.realpath(f"/proc/{candidate}/exe") == os.path.realpath(binary):
                return candidate
            with open(f"/proc/{candidate}/task/{candidate}/children") as children:
                queue += [int(child) for child in children.read().split()]
        except OSError:
            continue
    return pid


def run_engine(binary, connection_string, events, work, prefix=()):
    listen = f"127.0.0.1:{free_port()}"
    config = os.path.join(work, "hubroute.toml")
    with open(config, "w") as f:
        f.write(hubroute_config(connection_string, work, listen))
    log = open(os.path.join(work, "engine.log"), "w")
    start = time.monotonic()
    command = [*prefix, binary, "run", "--config", config]
    # Its own process group, so that a benchmark that fails or is interrupted takes the engine
    # (and a profiler's child) down with it instead of leaving it running.
    engine = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    metrics = f"http://{listen}/metrics"
    routed = 0
    try:
        while routed < events:
            time.sleep(0.05)
            if engine.poll() is not None:
                sys.exit(f"the engine exited early; see {log.name}")
            try:
                routed = metric_sum(metrics, "hubroute_events_routed_total")
            except OSError:
                continue
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(engine.pid, signal.SIGKILL)
        raise
    os.kill(engine_process(engine.pid, binary), signal.SIGTERM)
    _, status, usage = os.wait4(engine.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"the engine exited with {status}; see {log.name}")
    rows = {e: parquet_rows(os.path.join(work, "hubroute", e)) for e in ENDPOINTS}
    return wall, usage, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--mixed", action="store_true",
                        help="5%% non-JSON, 1%% 200 KB and 0.1%% empty bodies")
    parser.add_argument("--no-sdk", action="store_true", help="skip the azure-eventhub baseline")
    parser.add_argument("--hubroute", default=default_binary(), help="release binary to run")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--engine-prefix", default="", metavar="COMMAND",
                        help="run the engine under a profiler, e.g. 'perf record -g -o perf.data --' "
                             "or 'heaptrack -o engine' (its CPU and memory figures then include the "
                             "profiler's own)")
    args = parser.parse_args()
    if not os.path.exists(args.hubroute):
        sys.exit(f"{args.hubroute} is missing: run `cargo build --release` first")

    work = tempfile.mkdtemp(prefix="hubroute-e2e-")
    emulator, connection_string = start_emulator(args.hubroute, args.partitions, work)
    try:
        simulate = [args.hubroute, "simulate", "--connection-string", connection_string,
                    "--events", str(args.events), "--max"]
        if args.mixed:
            simulate += ["--mix", "non-json=5%,large=1%,empty=0.1%"]
        fill_wall, _, _, _ = run_waited(simulate, stderr=subprocess.DEVNULL)
        print(f"filled {args.events} events in {fill_wall:.1f} s", file=sys.stderr)

        before = cpu_seconds(emulator.pid)
        wall, usage, rows = run_engine(args.hubroute, connection_string, args.events, work,
                                       args.engine_prefix.split())
        cpu = usage.ru_utime + usage.ru_stime
        served = cpu_seconds(emulator.pid) - before
        if rows["lake"] != args.events:
            sys.exit(f"the lake endpoint has {rows['lake']} rows, expected {args.events}")
        result = {
            "events": args.events,
            "partitions": args.partitions,
            "mixed": args.mixed,
            "hubroute": {
                "wall_s": round(wall, 2),
                "events_per_s": round(args.events / wall),
                "engine_cpu_us_per_event": round(cpu / args.events * 1e6, 2),
                "engine_kernel_share": round(usage.ru_stime / cpu, 2),
                "engine_page_faults_per_event": round(usage.ru_minflt / args.events, 3),
                "emulator_cpu_us_per_event": round(served / args.events * 1e6, 2),
                "engine_peak_rss_mb": round(usage.ru_maxrss / 1024),
                "emulator_peak_rss_mb": round(peak_rss_mb(emulator.pid)),
                "rows": rows,
            },
        }
        if not args.no_sdk:
            python = os.environ.get("HUBROUTE_PYTHON", sys.executable)
            before = cpu_seconds(emulator.pid)
            sdk_wall, sdk_cpu, sdk_rss, out = run_waited(
                [python, os.path.join(ROOT, "benches", "e2e", "sdk_consumer.py"),
                 "--connection-string", connection_string, "--events", str(args.events),
                 "--out", os.path.join(work, "sdk")])
            sdk_served = cpu_seconds(emulator.pid) - before
            sdk_rows = json.loads(out.strip().splitlines()[-1])["rows"]
            if sdk_rows != rows:
                sys.exit(f"the SDK consumer routed {sdk_rows}, hubroute {rows}: the workload's "
                         "conditions and predicates disagree")
            result["sdk"] = {
                "wall_s": round(sdk_wall, 2),
                "events_per_s": round(args.events / sdk_wall),
                "consumer_cpu_us_per_event": round(sdk_cpu / args.events * 1e6, 2),
                "emulator_cpu_us_per_event": round(sdk_served / args.events * 1e6, 2),
                "consumer_peak_rss_mb": round(sdk_rss),
            }
            result["ratio"] = round(sdk_wall / wall, 1)
    finally:
        emulator.send_signal(signal.SIGINT)
        emulator.wait(timeout=30)
    print(json.dumps(result))
    h = result["hubroute"]
    print(f"\nhubroute: {h['events_per_s']:,} events/s, engine {h['engine_cpu_us_per_event']} µs/event "
          f"({h['engine_kernel_share']:.0%} in the kernel, {h['engine_page_faults_per_event']} page faults), "
          f"emulator {h['emulator_cpu_us_per_event']} µs/event, RSS engine {h['engine_peak_rss_mb']} MB, "
          f"emulator {h['emulator_peak_rss_mb']} MB", file=sys.stderr)
    if "sdk" in result:
        s = result["sdk"]
        print(f"azure-eventhub: {s['events_per_s']:,} events/s, consumer {s['consumer_cpu_us_per_event']} "
              f"µs/event; hubroute is {result['ratio']}x faster", file=sys.stderr)
    if args.keep:
        print(f"work directory: {work}", file=sys.stderr)
    else:
        subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()
