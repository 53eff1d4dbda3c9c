#!/usr/bin/env python3
"""Capture one real TLS ClientHello, byte for byte, from a real client.

Standard library only. Modes:

  capture_hello.py serve --out FILE [--port-file FILE] [--timeout SECS]
      Bind 127.0.0.1 on an ephemeral port, print the port (and write it to
      --port-file), accept ONE connection, read TLS records until the
      ClientHello handshake message is complete, then close. FILE gets exactly
      the raw bytes of every record that carried the hello, record headers
      included, up to the end of the record that completed it; nothing after.

  capture_hello.py --describe FILE     (or: capture_hello.py describe FILE)
      Independent little parser used as a sanity check of a capture: prints
      key=value lines (bytes, records, sni, alpn, key_share, ...).

  capture_hello.py python-client --port N --sni NAME [--alpn a,b]
      The Python `ssl` client used as one of the captured clients.

The capture server never answers: once it has the hello it closes, and the
client errors out. That is expected.
"""

import argparse
import os
import socket
import ssl
import struct
import sys
import time

RECORD_HANDSHAKE = 0x16
HANDSHAKE_CLIENT_HELLO = 1
MAX_RECORD_LEN = 2**14 + 2048  # generous upper bound for a plaintext record
MAX_HELLO_LEN = 1 << 20  # refuse absurd handshake lengths


class CaptureError(Exception):
    pass


def hello_end(buf):
    """Return the offset just past the record completing the ClientHello,
    or None if more bytes are needed. Raises CaptureError on bad input."""
    pos = 0
    hs = bytearray()
    while True:
        if len(buf) - pos < 5:
            return None
        ctype, _ver, length = struct.unpack_from("!BHH", buf, pos)
        if ctype != RECORD_HANDSHAKE:
            raise CaptureError(f"record at offset {pos} has type {ctype:#04x}, not handshake")
        if length == 0 or length > MAX_RECORD_LEN:
            raise CaptureError(f"record at offset {pos} has bad length {length}")
        if len(buf) - pos < 5 + length:
            return None
        hs += buf[pos + 5:pos + 5 + length]
        pos += 5 + length
        if len(hs) >= 4:
            if hs[0] != HANDSHAKE_CLIENT_HELLO:
                raise CaptureError(f"first handshake message has type {hs[0]}, not ClientHello")
            hlen = int.from_bytes(hs[1:4], "big")
            if hlen > MAX_HELLO_LEN:
                raise CaptureError(f"handshake length {hlen} is absurd")
            if len(hs) >= 4 + hlen:
                return pos


def serve(args):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(port, flush=True)

    deadline = time.monotonic() + args.timeout
    srv.settimeout(args.timeout)
    try:
        conn, _peer = srv.accept()
    except socket.timeout:
        raise CaptureError(f"no connection within {args.timeout}s")
    finally:
        srv.close()  # ONE connection only: later attempts are refused

    buf = bytearray()
    try:
        while True:
            end = hello_end(buf)
            if end is not None:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise CaptureError(f"incomplete ClientHello after {args.timeout}s ({len(buf)} bytes)")
            conn.settimeout(left)
            try:
                chunk = conn.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise CaptureError(f"client closed after {len(buf)} bytes, hello incomplete")
            buf += chunk
    finally:
        conn.close()

    data = bytes(buf[:end])
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.out)
    print(f"captured {len(data)} bytes -> {args.out}", file=sys.stderr)


# ---------------------------------------------------------------- describe

class Reader:
    def __init__(self, data):
        self.d = data
        self.p = 0

    def take(self, n):
        if self.p + n > len(self.d):
            raise CaptureError(f"truncated: need {n} bytes at {self.p} of {len(self.d)}")
        out = self.d[self.p:self.p + n]
        self.p += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return int.from_bytes(self.take(2), "big")

    def u24(self):
        return int.from_bytes(self.take(3), "big")

    def vec(self, width):
        n = int.from_bytes(self.take(width), "big")
        return self.take(n)

    def done(self):
        return self.p == len(self.d)


def describe(path):
    data = open(path, "rb").read()
    # Records.
    r = Reader(data)
    hs = bytearray()
    records = 0
    while not r.done():
        ctype = r.u8()
        ver = r.u16()
        frag = r.vec(2)
        if ctype != RECORD_HANDSHAKE:
            raise CaptureError(f"record {records} type {ctype:#04x}")
        if records == 0:
            record_version = ver
        records += 1
        hs += frag
    h = Reader(bytes(hs))
    if h.u8() != HANDSHAKE_CLIENT_HELLO:
        raise CaptureError("not a ClientHello")
    body = Reader(h.take(h.u24()))
    if not h.done():
        raise CaptureError(f"{len(hs) - h.p} trailing handshake bytes after the ClientHello")
    legacy_version = body.u16()
    body.take(32)  # random
    body.vec(1)  # session id
    suites = body.vec(2)
    body.vec(1)  # compression methods
    sni = None
    alpn = []
    key_share = []
    versions = []
    ext_types = []
    if not body.done():
        exts = Reader(body.vec(2))
        if not body.done():
            raise CaptureError("trailing bytes after extensions")
        while not exts.done():
            etype = exts.u16()
            e = Reader(exts.vec(2))
            ext_types.append(etype)
            if etype == 0:  # server_name
                names = Reader(e.vec(2))
                while not names.done():
                    ntype = names.u8()
                    name = names.vec(2)
                    if ntype == 0:
                        if sni is not None:
                            raise CaptureError("two host names in server_name")
                        sni = name.decode("ascii")
            elif etype == 16:  # ALPN
                protos = Reader(e.vec(2))
                while not protos.done():
                    alpn.append(protos.vec(1).decode("ascii"))
            elif etype == 51:  # key_share (client form)
                shares = Reader(e.vec(2))
                while not shares.done():
                    group = shares.u16()
                    shares.vec(2)
                    key_share.append(group)
            elif etype == 43:  # supported_versions (client form)
                vs = Reader(e.vec(1))
                while not vs.done():
                    versions.append(vs.u16())
    hexs = lambda xs: ",".join(f"{x:#06x}" for x in xs)
    print(f"file={os.path.basename(path)}")
    print(f"bytes={len(data)}")
    print(f"records={records}")
    print(f"record_version={record_version:#06x}")
    print(f"handshake_len={len(hs) - 4}")
    print(f"legacy_version={legacy_version:#06x}")
    print(f"cipher_suites={len(suites) // 2}")
    print(f"sni={sni if sni is not None else '-'}")
    print(f"alpn={','.join(alpn)}")
    print(f"supported_versions={hexs(versions)}")
    print(f"key_share={hexs(key_share)}")
    print(f"extensions={hexs(ext_types)}")


# ------------------------------------------------------------ python client

def python_client(args):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if args.alpn:
        ctx.set_alpn_protocols(args.alpn.split(","))
    with socket.create_connection(("127.0.0.1", args.port), timeout=10) as sock:
        try:
            with ctx.wrap_socket(sock, server_hostname=args.sni):
                pass
        except (ssl.SSLError, OSError) as exc:
            print(f"python client: handshake ended as expected: {exc}", file=sys.stderr)
            return
    print("python client: handshake unexpectedly succeeded", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--out", required=True)
    s.add_argument("--port-file")
    s.add_argument("--timeout", type=float, default=30.0)
    d = sub.add_parser("describe")
    d.add_argument("file")
    c = sub.add_parser("python-client")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--sni", required=True)
    c.add_argument("--alpn", default="")
    argv = sys.argv[1:]
    if argv[:1] == ["--describe"]:
        argv = ["describe"] + argv[1:]
    args = ap.parse_args(argv)
    try:
        if args.mode == "serve":
            serve(args)
        elif args.mode == "describe":
            describe(args.file)
        else:
            python_client(args)
    except CaptureError as exc:
        print(f"capture_hello.py: error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
