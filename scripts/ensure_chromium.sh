#!/usr/bin/env bash
# The dashboard test drives Debian's Chromium; install it when the machine lacks it.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "chromium is missing and installing it needs root: apt-get install chromium" >&2
    exit 1
fi
echo "installing Debian's chromium for the dashboard test"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
