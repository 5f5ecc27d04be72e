#!/bin/sh
set -eu
echo "running nightly export"
