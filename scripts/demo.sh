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

# ---------------------------------------------------------------- web UI
REPO_DIR=${KVMOPS_DEMO_REPO:-/var/lib/kvmops/demo-repo}
WEB_DIR=/var/lib/kvmops/demo-web
ADDR=127.0.0.1
PORT=${KVMOPS_DEMO_PORT:-8080}
echo "== one backup of $NAME into $REPO_DIR (a new repository each run)"
rm -rf "$REPO_DIR"
install -d -m 0755 "$REPO_DIR"
$K backup create "$NAME" --repo "$REPO_DIR" --full

echo "== web UI: kvmops serve on $ADDR:$PORT"
install -d -m 0700 "$WEB_DIR"
if [ -f "$WEB_DIR/serve.pid" ]; then  # the server an earlier demo run started
  old=$(cat "$WEB_DIR/serve.pid")
  if kill -0 "$old" 2>/dev/null && grep -q "kvmops" "/proc/$old/cmdline" 2>/dev/null; then
    kill "$old"
    for _ in $(seq 1 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$WEB_DIR/serve.pid"
fi
rm -f "$WEB_DIR/kvmops.sqlite"  # a fresh database: a new admin with a one-time password
KVMOPS_WEB_REPO="$REPO_DIR" setsid nohup .venv/bin/kvmops serve --host "$ADDR" --port "$PORT" \
  --db "sqlite:///$WEB_DIR/kvmops.sqlite" \
  --allow-dir /var/lib/kvmops --allow-dir "$GUEST" >"$WEB_DIR/serve.log" 2>&1 </dev/null &
echo $! >"$WEB_DIR/serve.pid"
for _ in $(seq 1 150); do
  curl -fs "http://$ADDR:$PORT/api/v1/health" >/dev/null 2>&1 && break
  kill -0 "$(cat "$WEB_DIR/serve.pid")" 2>/dev/null || { cat "$WEB_DIR/serve.log" >&2; exit 1; }
  sleep 0.2
done
PASSWORD=$(sed -n 's/.*One-time password: *//p' "$WEB_DIR/serve.log" | head -1)
echo
echo "  Web UI:   http://$ADDR:$PORT/   (backups: http://$ADDR:$PORT/vms/$NAME/backups?repo=$REPO_DIR)"
echo "  Log in:   admin / $PASSWORD   (one-time password; change it with: $K user passwd admin --db sqlite:///$WEB_DIR/kvmops.sqlite)"
echo "  Server:   pid $(cat "$WEB_DIR/serve.pid"), log $WEB_DIR/serve.log; stop it with: kill \$(cat $WEB_DIR/serve.pid)"
