#!/usr/bin/env bash
# A headless Chromium for the report's browser test (tests/browser.py), from Debian's packages.
# Does nothing when one is already there or CHROMIUM names one; as a non-root user it only
# says what to install (the test then skips, except on CI where it fails).
set -uo pipefail
[ -n "${CHROMIUM:-}" ] && exit 0
for browser in chromium-headless-shell chromium chromium-browser google-chrome; do
  command -v "$browser" >/dev/null 2>&1 && exit 0
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's chromium-headless-shell for the report screenshot test"
  export DEBIAN_FRONTEND=noninteractive
  if apt-get update -qq >/dev/null && apt-get install -y -qq chromium-headless-shell >/dev/null; then
    exit 0
  fi
  echo "could not install chromium-headless-shell" >&2
  [ -z "${CI:-}" ]  # fatal on CI only
  exit
fi
echo "note: no headless Chromium; the report screenshot test will skip" \
  "(apt-get install chromium-headless-shell, or set CHROMIUM=/path/to/chrome)"
