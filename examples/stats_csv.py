#!/usr/bin/env python3
"""Stream every voicelink call's statistics as CSV, one row per sample.

A script talks to voiced over the same gRPC API as voicectl. This one builds its
Python stubs from the project's .proto on first run (with grpcio-tools), then
follows WatchStats for every call and writes one CSV row per sample to stdout;
when a call ends, its last row has `event` = "summary" and the summary columns.

    python3 -m venv ~/.venvs/voicelink && ~/.venvs/voicelink/bin/pip install grpcio grpcio-tools
    ~/.venvs/voicelink/bin/python examples/stats_csv.py > calls.csv
    ~/.venvs/voicelink/bin/python examples/stats_csv.py --interval-ms 250 --socket /run/user/1000/voicelink/voiced.sock

Stop it with Ctrl-C. It waits for calls when there are none, and says so on
stderr when the daemon is not running.
"""

import argparse
import csv
import importlib
import os
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto" / "proto"
PROTO_FILE = "voicelink/v1/voicelink.proto"

COLUMNS = [
    "event", "call_id", "peer", "state", "duration_s", "rtt_ms", "rtt_source", "jitter_ms",
    "packets_sent", "packets_received", "packets_lost", "fraction_lost", "remote_packets_lost",
    "remote_fraction_lost", "jitter_buffer_ms", "concealed_samples", "fec_recovered",
    "level_in_dbfs", "level_out_dbfs", "mos", "quality",
    "setup_ms", "talk_s", "worst_minute_mos", "end_reason",
]


def default_socket():
    """Where voiced listens by default (see README, "Control socket")."""
    if os.environ.get("VOICELINK_SOCKET"):
        return os.environ["VOICELINK_SOCKET"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "voicelink", "voiced.sock")
    return os.path.join(tempfile.gettempdir(), f"voicelink-{os.getuid()}", "voiced.sock")


def load_stubs():
    """Generates (once) and imports voicelink_pb2 / voicelink_pb2_grpc."""
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit("stats_csv: needs grpcio and grpcio-tools: pip install grpcio grpcio-tools")
    out = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "voicelink" / "python-stubs"
    generated = out / "voicelink" / "v1" / "voicelink_pb2.py"
    proto = PROTO_ROOT / PROTO_FILE
    if not generated.exists() or generated.stat().st_mtime < proto.stat().st_mtime:
        out.mkdir(parents=True, exist_ok=True)
        include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
        status = protoc.main([
            "protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
            str(proto),
        ])
        if status != 0:
            sys.exit(f"stats_csv: protoc could not compile {proto}")
    sys.path.insert(0, str(out))
    return importlib.import_module("voicelink.v1.voicelink_pb2"), importlib.import_module("voicelink.v1.voicelink_pb2_grpc")


def seconds(duration):
    return duration.seconds + duration.nanos / 1e9


def row(pb, sample):
    state = pb.CallState.Name(sample.state).removeprefix("CALL_STATE_").lower()
    values = {
        "event": "sample",
        "call_id": sample.call_id,
        "peer": sample.peer_display_name or sample.peer_device_id[:7],
        "state": state,
        "duration_s": f"{seconds(sample.duration):.1f}",
        "rtt_ms": f"{sample.round_trip_time_ms:.1f}",
        "rtt_source": sample.round_trip_time_source,
        "jitter_ms": f"{sample.jitter_ms:.1f}",
        "packets_sent": sample.packets_sent,
        "packets_received": sample.packets_received,
        "packets_lost": sample.packets_lost,
        "fraction_lost": f"{sample.fraction_lost:.4f}",
        "remote_packets_lost": sample.remote_packets_lost,
        "remote_fraction_lost": f"{sample.remote_fraction_lost:.4f}",
        "jitter_buffer_ms": f"{sample.jitter_buffer_delay_ms:.0f}",
        "concealed_samples": sample.concealed_samples,
        "fec_recovered": sample.packets_recovered_fec,
        "level_in_dbfs": f"{sample.audio_level_in_dbfs:.1f}",
        "level_out_dbfs": f"{sample.audio_level_out_dbfs:.1f}",
        "mos": f"{sample.mos:.2f}",
        "quality": sample.quality,
    }
    if sample.HasField("summary"):
        summary = sample.summary
        values.update({
            "event": "summary",
            "setup_ms": f"{seconds(summary.setup_time) * 1000:.0f}",
            "talk_s": f"{seconds(summary.duration):.1f}",
            "worst_minute_mos": f"{summary.worst_minute_mos:.2f}",
            "end_reason": pb.EndReason.Name(summary.end_reason).removeprefix("END_REASON_").lower(),
        })
    return values


def main():
    parser = argparse.ArgumentParser(description="Stream every voicelink call's statistics as CSV.")
    parser.add_argument("--socket", default=default_socket(), help="voiced's control socket")
    parser.add_argument("--interval-ms", type=int, default=1000, help="between samples, 100 to 10000")
    args = parser.parse_args()

    import grpc
    from google.protobuf.duration_pb2 import Duration

    pb, pb_grpc = load_stubs()
    channel = grpc.insecure_channel(f"unix:{args.socket}")
    stub = pb_grpc.VoicelinkStub(channel)
    interval = Duration()
    interval.FromMilliseconds(args.interval_ms)
    writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS)
    writer.writeheader()
    sys.stdout.flush()
    try:
        for sample in stub.WatchStats(pb.WatchStatsRequest(interval=interval)):
            writer.writerow(row(pb, sample))
            sys.stdout.flush()
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            sys.exit(f"stats_csv: voiced is not running (no socket at {args.socket}): start it with `make run`")
        sys.exit(f"stats_csv: {error.code().name}: {error.details()}")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
