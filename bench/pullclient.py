#!/usr/bin/env python3
"""One registry client, run as its own process so clients never share a GIL.

    pullclient.py pull  PORT REPO TAG MANIFEST_DIGEST PARALLEL
    pullclient.py blobs PORT REPO DIGEST:SIZE...

`pull` does what docker does: GET the manifest by tag, then the config and the layers with up to
PARALLEL downloads at once. `blobs` fetches the listed blobs one after another. Every body is
hashed and checked against its digest and size.

Protocol with the driver: print "ready", wait for one line on stdin (so N clients start at the
same instant), then print one JSON line {"start", "end", "bytes", "errors"}, times from
CLOCK_MONOTONIC (system-wide, comparable across processes).
"""

import hashlib
import http.client
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ACCEPT = ("application/vnd.oci.image.manifest.v1+json,"
          "application/vnd.docker.distribution.manifest.v2+json")
BUF = 1 << 20


def fetch(port, path, headers=None):
    """(status, sha256 hex, byte count, body if under 1 MiB) of one GET, streamed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        h = hashlib.sha256()
        buf = bytearray(BUF)
        view = memoryview(buf)
        small = bytearray()
        count = 0
        while True:
            n = resp.readinto(buf)
            if not n:
                break
            h.update(view[:n])  # hashlib drops the GIL for big updates
            if count < BUF:
                small += view[:n]
            count += n
        return resp.status, h.hexdigest(), count, bytes(small)
    finally:
        conn.close()


def get_blob(port, repo, digest, size, errors):
    """Downloads one blob; appends a message to errors on any mismatch. Returns bytes read."""
    try:
        status, hexd, count, _ = fetch(port, f"/v2/{repo}/blobs/{digest}")
    except (OSError, http.client.HTTPException) as e:
        errors.append(f"blob {digest[:19]}: {type(e).__name__}: {e}")
        return 0
    if status != 200 or count != size or "sha256:" + hexd != digest:
        errors.append(f"blob {digest[:19]}: status {status}, {count} bytes (want {size}),"
                      f" sha256:{hexd[:12]}")
    return count


def pull(port, repo, tag, manifest_digest, parallel, errors):
    """Manifest by tag, then config + layers, `parallel` at a time. Returns bytes read."""
    status, hexd, count, body = fetch(port, f"/v2/{repo}/manifests/{tag}", {"Accept": ACCEPT})
    if status != 200 or "sha256:" + hexd != manifest_digest:
        errors.append(f"manifest {tag}: status {status}, sha256:{hexd[:12]}"
                      f" (want {manifest_digest[:19]})")
        return count
    manifest = json.loads(body)
    blobs = [manifest["config"]] + manifest["layers"]
    with ThreadPoolExecutor(parallel) as pool:
        counts = pool.map(lambda b: get_blob(port, repo, b["digest"], b["size"], errors), blobs)
        return count + sum(counts)


def main(argv):
    mode, port, repo = argv[0], int(argv[1]), argv[2]
    errors = []
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    if mode == "pull":
        total = pull(port, repo, argv[3], argv[4], int(argv[5]), errors)
    else:
        total = 0
        for spec in argv[3:]:
            digest, size = spec.rsplit(":", 1)
            total += get_blob(port, repo, digest, int(size), errors)
    end = time.monotonic()
    print(json.dumps({"start": start, "end": end, "bytes": total, "errors": errors}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
