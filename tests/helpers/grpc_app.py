"""
A tiny gRPC backend for tests (grpcio, no generated code): service ``test.Echo`` with

- ``Unary``: answers ``<name> <request>``, so a client can count which backend served each call;
- ``Stream``: request ``"<count>,<interval_ms>"``, answers ``count`` messages ``<name> <i>``, one
  every ``interval_ms`` (a long-lived server stream);

and gRPC's own health service (``grpc.health.v1.Health``), where the whole server ("") is SERVING
and ``test.Echo`` is SERVING unless ``--not-serving``. Run it as its own process:

    python -m tests.helpers.grpc_app --port 50051 --name a [--not-serving]
"""

import argparse
import signal
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICE = "test.Echo"
UNARY = f"/{SERVICE}/Unary"
STREAM = f"/{SERVICE}/Stream"


def make_server(port, name, serving=True):
    def unary(request, context):
        return f"{name} {request.decode()}".encode()

    def stream(request, context):
        count, interval_ms = (int(part) for part in request.decode().split(","))
        for index in range(count):
            if index:
                time.sleep(interval_ms / 1000)
            yield f"{name} {index}".encode()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    # No (de)serializers: requests and responses are raw bytes.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
    }),))
    checks = health.HealthServicer()
    checks.set("", health_pb2.HealthCheckResponse.SERVING)
    checks.set(SERVICE, health_pb2.HealthCheckResponse.SERVING if serving
               else health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    return server


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="grpc")
    parser.add_argument("--not-serving", action="store_true", help=f"health: {SERVICE} is NOT_SERVING")
    args = parser.parse_args()
    server = make_server(args.port, args.name, serving=not args.not_serving)
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
