"""A streaming client that does not read, for tests/server_attacks_test.ts (stream backpressure over a
real socket). Usage: python3 slow_reader.py PORT PATH, the JSON body on stdin's first line.

Loopback sockets hold megabytes before a sender notices a reader that does not read: Linux sizes a
connection's send buffer from its congestion window in segments of the peer's MSS (64 KiB on loopback,
so about 2.6 MB from the start). A tiny receive buffer alone does not help; a small MSS, announced in
the SYN (TCP_MAXSEG before connect), keeps the server's send buffer near its 16 KiB minimum, so the
server's writes block after some tens of KB, as they would for a slow reader across a network.

Prints a JSON line once the request is sent, waits for a line on stdin, then reads the answer to its end
and prints a JSON line: the bytes received, whether the stream ended with [DONE], the status line.
"""
import json
import socket
import sys

port, path = int(sys.argv[1]), sys.argv[2]
body = sys.stdin.readline().strip().encode()
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
s.connect(("127.0.0.1", port))
head = "POST %s HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
s.sendall((head % (path, len(body))).encode() + body)
print(json.dumps({"sent": len(body), "mss": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)}), flush=True)
sys.stdin.readline()
s.settimeout(10)
got = bytearray()
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
except OSError:
    pass  # reset, or nothing for 10 s: what came is what counts
status = bytes(got[: got.find(b"\r\n")]).decode("latin1") if b"\r\n" in got else ""
print(json.dumps({"bytes": len(got), "done": b"data: [DONE]" in got, "status": status}), flush=True)
