"""Sends messages a client library can produce by mistake or malice, as raw bytes through
grpcio: a string field that is not UTF-8, bytes that are not protobuf, and a message far over
the router's limit. Prints each answer's status code and message as one JSON line."""
import json
import sys

import grpc


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


addr = sys.argv[1]
big = int(sys.argv[2]) if len(sys.argv) > 2 else 100 << 20
channel = grpc.insecure_channel(addr, options=[("grpc.max_send_message_length", 200 << 20)])
call = channel.unary_unary("/grm.v1.RewardService/Score",
                           request_serializer=lambda b: b, response_deserializer=lambda b: b)
cases = {
    # field 1 (id), length 2, bytes that are not UTF-8
    "not_utf8": b"\x0a\x02\xff\xfe",
    # a field announcing more bytes than follow
    "corrupt": b"\x12\xff\xff\xff\x0f\x01",
    # field 1 (id) holding `big` bytes
    "too_large": b"\x0a" + varint(big) + b"a" * big,
}
out = {}
for name, payload in cases.items():
    try:
        call(payload, timeout=60)
        out[name] = ["OK", ""]
    except grpc.RpcError as e:
        out[name] = [e.code().name, e.details()]
print(json.dumps(out))
