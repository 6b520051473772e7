#!/usr/bin/env python3
"""A gRPC call as grpcurl 1.8 and grpc-java make it on a Unix socket: the HTTP/2
:authority is the socket's path itself, unencoded. Sends grpc.health.v1.Health/Check
with the python `h2` library and prints the grpc-status the daemon answers (0: OK).

    python bare_authority.py SOCKET
"""

import socket
import sys

import h2.config
import h2.connection
import h2.events


def main():
    path = sys.argv[1]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/grpc.health.v1.Health/Check"),
        (":authority", path),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ])
    # An empty HealthCheckRequest: no compression flag, zero length.
    conn.send_data(stream, b"\x00\x00\x00\x00\x00", end_stream=True)
    sock.sendall(conn.data_to_send())
    status = None
    while status is None:
        data = sock.recv(65536)
        if not data:
            print("closed", flush=True)
            return 1
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.StreamReset):
                print(f"reset {event.error_code}", flush=True)
                return 1
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                headers = dict((k.decode(), v.decode()) for k, v in event.headers)
                if "grpc-status" in headers:
                    status = headers["grpc-status"]
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        sock.sendall(conn.data_to_send())
    print(f"grpc-status {status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
