#!/usr/bin/env bash
# One command: build cloudmount (release) and run the side-by-side benchmark against
# `rclone mount --vfs-cache-mode full`, printing a markdown table.
#
#   bench/run.sh                 # full sizes (about 10 minutes on 2 cores)
#   bench/run.sh --quick         # small sizes, a smoke test (about 1 minute)
#   bench/run.sh --big-mib 256   # any bench.py option passes through
#
# Needs: rclone, fusermount3, python3 >= 3.9, tar, dd; root or /dev/fuse access.
# CLOUDMOUNT_BIN=/path/to/cloudmount skips the build and uses that binary.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"

if [[ -z "${CLOUDMOUNT_BIN:-}" ]]; then
  (cd "$repo" && cargo build --release --bin cloudmount)
  CLOUDMOUNT_BIN="$repo/target/release/cloudmount"
fi

args=()
if [[ "${1:-}" == "--quick" ]]; then
  shift
  args=(--big-mib 32 --proxy-big-mib 16 --random-mib 256 --random-reads 20
        --tree-files 1000 --small-files 100 --tar-files 200 --dd-mib 32)
fi

echo "cloudmount: $("$CLOUDMOUNT_BIN" --version)" >&2
echo "rclone:     $(rclone version | head -1)" >&2
exec python3 "$here/bench.py" --cloudmount "$CLOUDMOUNT_BIN" "${args[@]}" "$@"
