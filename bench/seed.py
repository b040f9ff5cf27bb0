"""The benchmark image: an OCI layout of random layers on disk, pushed to the origin with skopeo.

Layers are gzip streams of random bytes, not tars: registries and mirrors never look inside
them, and random data keeps any compression along the way from flattering a contender.
"""

import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field

from harness import BenchError, http_get, run_checked

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ACCEPT = f"{OCI_MANIFEST},application/vnd.docker.distribution.manifest.v2+json"

CHUNK = 4 << 20


@dataclass
class Blob:
    digest: str  # "sha256:<hex>"
    size: int
    path: str  # the file in the OCI layout

    @property
    def hex(self):
        return self.digest.split(":", 1)[1]


@dataclass
class Image:
    repo: str
    tag: str
    config: Blob
    layers: list = field(default_factory=list)
    manifest: bytes = b""
    manifest_digest: str = ""

    @property
    def pull_bytes(self):
        """What one client downloads for a full pull: manifest, config, layers."""
        return len(self.manifest) + self.config.size + sum(b.size for b in self.layers)


def _put(blob_dir, data):
    """Writes `data` content-addressed; returns its Blob."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = os.path.join(blob_dir, digest[7:])
    with open(path, "wb") as f:
        f.write(data)
    return Blob(digest, len(data), path)


def _random_blob(blob_dir, size):
    """A gzip layer of `size` random bytes, deflate level 0 (stored blocks, a few KiB over
    `size`). Real gzip because skopeo gzips any layer that does not look compressed, and
    level 0 because random data does not compress anyway. Written in chunks."""
    tmp = os.path.join(blob_dir, "incoming")
    h = hashlib.sha256()
    gz = zlib.compressobj(0, zlib.DEFLATED, 31)  # wbits 31: gzip wrapper
    written = 0
    with open(tmp, "wb") as f:
        left = size
        while left >= 0:
            chunk = os.urandom(min(CHUNK, left))
            left -= len(chunk)
            out = gz.compress(chunk) if chunk else gz.flush()
            h.update(out)
            f.write(out)
            written += len(out)
            if not chunk:
                break
    path = os.path.join(blob_dir, h.hexdigest())
    os.rename(tmp, path)
    return Blob("sha256:" + h.hexdigest(), written, path)


def _descriptor(media_type, blob):
    return {"mediaType": media_type, "digest": blob.digest, "size": blob.size}


def make_layout(layout_dir, repo, tag, layer_size, n_layers):
    """Writes blobs/, config, manifest, index.json and oci-layout; returns the Image."""
    blob_dir = os.path.join(layout_dir, "blobs", "sha256")
    os.makedirs(blob_dir)
    layers = [_random_blob(blob_dir, layer_size) for _ in range(n_layers)]
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        # Nothing on the pull path checks diff_ids against the uncompressed layers.
        "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layers]},
    }).encode()
    config_blob = _put(blob_dir, config)
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _descriptor(OCI_CONFIG, config_blob),
        "layers": [_descriptor(OCI_LAYER, b) for b in layers],
    }).encode()
    manifest_blob = _put(blob_dir, manifest)
    entry = _descriptor(OCI_MANIFEST, manifest_blob)
    entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    with open(os.path.join(layout_dir, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [entry]}, f)
    with open(os.path.join(layout_dir, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return Image(repo, tag, config_blob, layers, manifest, manifest_blob.digest)


def push(image, layout_dir, port, work_dir):
    """skopeo copy oci:DIR:tag -> the origin, with no system policy or registries config."""
    empty_conf = os.path.join(work_dir, "registries.conf")
    open(empty_conf, "w").close()
    env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    run_checked(
        ["skopeo", "--insecure-policy", "--registries-conf", empty_conf, "copy",
         "--dest-tls-verify=false", f"oci:{layout_dir}:{image.tag}",
         f"docker://127.0.0.1:{port}/{image.repo}:{image.tag}"],
        "skopeo copy to the origin", env=env)
    _read_back(image, port)


def _read_back(image, port):
    """Takes the manifest as the origin serves it (skopeo may rewrite it) as the truth."""
    status, headers, body = http_get(
        port, f"/v2/{image.repo}/manifests/{image.tag}", {"Accept": ACCEPT})
    if status != 200:
        raise BenchError(f"origin manifest GET: {status} {body[:200]!r}")
    served = json.loads(body)
    want = [b.digest for b in image.layers]
    if [l["digest"] for l in served["layers"]] != want:
        raise BenchError("origin serves different layers than were pushed")
    image.manifest = body
    image.manifest_digest = "sha256:" + hashlib.sha256(body).hexdigest()
