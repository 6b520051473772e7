#!/usr/bin/env python3
"""Call any method of the voicelink control API with no .proto file at hand.

The daemon serves gRPC reflection, so a script can learn every service, method and
message from the daemon itself (grpcio-reflection), then call a method with a JSON
request and print each response as one JSON line. A small grpcurl for scripts:

    python3 -m venv ~/.venvs/voicelink && ~/.venvs/voicelink/bin/pip install grpcio grpcio-reflection
    ~/.venvs/voicelink/bin/python examples/call_api.py list
    ~/.venvs/voicelink/bin/python examples/call_api.py GetStatus
    ~/.venvs/voicelink/bin/python examples/call_api.py Dial '{"target": "bob"}'
    ~/.venvs/voicelink/bin/python examples/call_api.py WatchEvents --max 5

A method name alone means voicelink.v1.Voicelink; give `Service/Method` for the
others (`grpc.health.v1.Health/Check`). Exit status: 0 on success, 1 when the
daemon answers with an error (its message on stderr), 3 when it cannot be reached.
"""

import argparse
import json
import os
import sys
import tempfile

import grpc
from google.protobuf import json_format
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

DEFAULT_SERVICE = "voicelink.v1.Voicelink"


def default_socket():
    """Where voiced listens by default (see README, "Control socket")."""
    if os.environ.get("VOICELINK_SOCKET"):
        return os.environ["VOICELINK_SOCKET"]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "voicelink", "voiced.sock")
    return os.path.join(tempfile.gettempdir(), f"voicelink-{os.getuid()}", "voiced.sock")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method", help="'list', a method of voicelink.v1.Voicelink, or Service/Method")
    parser.add_argument("request", nargs="?", default="{}", help="the request as JSON (default: {})")
    parser.add_argument("--socket", default=default_socket(), help="the daemon's control socket")
    parser.add_argument("--max", type=int, default=0, help="stop a stream after this many responses")
    args = parser.parse_args()

    # A plain channel: no .proto, no authority option. The daemon accepts whatever
    # authority a Unix-socket client sends.
    channel = grpc.insecure_channel(f"unix:{args.socket}")
    reflection = ProtoReflectionDescriptorDatabase(channel)
    try:
        if args.method == "list":
            for service in sorted(reflection.get_services()):
                print(service)
            return 0
        service_name, _, method_name = args.method.rpartition("/")
        service = DescriptorPool(reflection).FindServiceByName(service_name or DEFAULT_SERVICE)
        method = service.methods_by_name.get(method_name)
        if method is None:
            print(f"call_api: {service.full_name} has no method {method_name}; it has: "
                  + ", ".join(sorted(service.methods_by_name)), file=sys.stderr)
            return 2
        if method.client_streaming:
            print(f"call_api: {method_name} takes a stream of requests, which this script does not send",
                  file=sys.stderr)
            return 2
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        try:
            request = json_format.Parse(args.request, request_class())
        except json_format.ParseError as error:
            print(f"call_api: the request is not a {method.input_type.full_name}: {error}", file=sys.stderr)
            return 2
        path = f"/{service.full_name}/{method.name}"
        kind = channel.unary_stream if method.server_streaming else channel.unary_unary
        call = kind(path, request_serializer=request_class.SerializeToString,
                    response_deserializer=response_class.FromString)
        responses = call(request) if method.server_streaming else [call(request)]
        for count, response in enumerate(responses, start=1):
            print(json.dumps(json_format.MessageToDict(response)), flush=True)
            if args.max and count >= args.max:
                break
        return 0
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            print(f"call_api: voiced is not reachable on {args.socket}: {error.details()}", file=sys.stderr)
            return 3
        print(f"call_api: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except KeyError as error:
        # The descriptor pool's way of saying a service does not exist.
        print(f"call_api: the daemon has no such service: {error}", file=sys.stderr)
        return 2
    finally:
        channel.close()


if __name__ == "__main__":
    sys.exit(main())
