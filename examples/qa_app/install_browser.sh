#!/usr/bin/env bash
# Installs the system Chromium the QA app's browser test drives (never `playwright install`).
# Idempotent: does nothing when /usr/bin/chromium exists. Needs root (CI containers run as root).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium
