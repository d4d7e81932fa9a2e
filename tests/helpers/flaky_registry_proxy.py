#!/usr/bin/env python3
"""A registry proxy that breaks blob downloads off: the first CUT blob GETs get their headers
(with the full Content-Length) and half the body, then the connection is closed. Everything
else is passed through to the registry at 127.0.0.1:UPSTREAM. Prints its port, then serves.

Usage: flaky_registry_proxy.py UPSTREAM_PORT CUT   (CUT=-1: every blob GET is cut;
CUT=-2: every blob is sent whole but with its last byte changed)
"""
import http.server
import socket
import sys
import threading
import urllib.error
import urllib.request

upstream, cut = int(sys.argv[1]), int(sys.argv[2])
lock = threading.Lock()
cuts_left = [cut]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


opener = urllib.request.build_opener(NoRedirect)


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.forward("GET")

    def do_HEAD(self):
        self.forward("HEAD")

    def forward(self, method):
        req = urllib.request.Request(f"http://127.0.0.1:{upstream}{self.path}", method=method)
        for k in ("Accept", "Authorization", "Range"):
            if self.headers.get(k):
                req.add_header(k, self.headers[k])
        try:
            resp = opener.open(req, timeout=30)
        except urllib.error.HTTPError as e:
            resp = e
        body = resp.read() if method == "GET" else b""
        cut_this = False
        if cut == -2 and method == "GET" and "/blobs/sha256:" in self.path and body:
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        elif method == "GET" and "/blobs/sha256:" in self.path and len(body) > 1:
            with lock:
                if cuts_left[0] != 0:
                    cuts_left[0] -= 1
                    cut_this = True
        self.send_response(resp.status if hasattr(resp, "status") else resp.code)
        for k, v in resp.headers.items():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        length = resp.headers.get("Content-Length") or str(len(body))
        self.send_header("Content-Length", length)
        self.end_headers()
        if cut_this:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a client that went away mid-answer (the cut itself, or a retry's race)


server = Server(("127.0.0.1", 0), Proxy)
print(server.server_address[1], flush=True)
server.serve_forever()
