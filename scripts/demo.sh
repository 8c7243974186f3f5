#!/usr/bin/env bash
# The main job on the embedded default: build the tiny guest, create and boot a
# demo VM, show it in the VM list and ping its guest agent. Re-runnable.
set -euo pipefail
cd "$(dirname "$0")/.."
K=".venv/bin/kvmops"
NAME=${KVMOPS_DEMO_VM:-kvmops-demo}
GUEST=${GUEST_DIR:-/var/cache/kvmops/guest}

echo "== building the tiny guest in $GUEST (cached after the first run)"
$K dev build-guest "$GUEST"

echo "== host"
$K host info

if $K vm info "$NAME" --json >/dev/null 2>&1; then
  echo "== $NAME exists: recreating it"
  $K vm destroy "$NAME" >/dev/null 2>&1 || true
  $K vm undefine "$NAME" --remove-storage
fi

echo "== creating $NAME"
$K vm create "$NAME" --memory 256M --vcpus 1 \
  --kernel "$GUEST/vmlinuz" --initrd "$GUEST/initrd.img" --cmdline "console=ttyS0" \
  --disk size=64M
echo "== starting $NAME and waiting for its guest agent"
$K vm start "$NAME" --wait-agent 120
$K vm list
echo "== guest agent ping"
$K vm info "$NAME" --json | .venv/bin/python -c \
  'import json,sys; d=json.load(sys.stdin); print("agent answering:", d["agent"]); sys.exit(0 if d["agent"] else 1)'
echo "== demo VM '$NAME' is running; remove it with: $K vm destroy $NAME && $K vm undefine $NAME --remove-storage"
