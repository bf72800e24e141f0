#!/usr/bin/env bash
# What the networking tests run on the host side: iputils' ping (Debian's package),
# iproute2's ip (netns, tuntap), and QEMU (tests/net.rs runs the test guest under its
# TCG, whose virtio-net is the reference). Installs whichever is missing; does nothing
# otherwise.
set -euo pipefail
missing=()
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-net-tools: ${missing[*]} missing and not root; install them" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
