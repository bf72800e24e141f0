#!/bin/sh
# curl for tests/api.rs (the Firecracker getting-started calls with curl --unix-socket).
set -e
command -v curl >/dev/null 2>&1 && exit 0
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl
