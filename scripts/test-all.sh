#!/usr/bin/env bash
# Runs every check and test of regmirror on a fresh Debian machine (as root, or with sudo):
# installs the real peers the tests drive (distribution registry, dockerd, containerd,
# skopeo, nginx...), then cargo fmt --check, clippy -D warnings, and the whole test suite.
# A missing peer makes the tests fail, never skip.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(docker-registry docker.io containerd runc skopeo nginx wrk hyperfine busybox-static curl ca-certificates iproute2 procps)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing: ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

echo "==> cargo fmt --check"
cargo fmt --check
echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
