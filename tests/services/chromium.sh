#!/usr/bin/env bash
# Headless Chromium and its WebDriver for the browser tests of the admin report (tests/report/).
#
#   tests/services/chromium.sh install   # installs Debian's chromium and chromium-driver when missing
#   tests/services/chromium.sh status    # exit 0 when both are installed
#
# The tests drive /usr/bin/chromium through /usr/bin/chromedriver and never download a browser. Without
# root (or without the packages) nothing is installed: the browser tests skip, or fail under CI=true.
set -euo pipefail

BROWSER=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

log() { echo "chromium.sh: $*" >&2; }

installed() { [ -x "$BROWSER" ] && [ -x "$DRIVER" ]; }

install() {
  if installed; then
    log "chromium and chromedriver already installed: nothing to do"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    log "chromium or chromedriver is missing and we are not root: install Debian's 'chromium' and" \
      "'chromium-driver' packages to run the browser tests"
    return 1
  fi
  log "installing Debian packages chromium chromium-driver"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  if installed; then
    log "installed $("$BROWSER" --version 2>/dev/null || echo chromium)"
  else
    log "apt-get finished but $BROWSER or $DRIVER is still missing"
    return 1
  fi
}

case "${1:-}" in
  install) install ;;
  status) installed ;;
  *) echo "usage: $0 install|status" >&2; exit 2 ;;
esac
