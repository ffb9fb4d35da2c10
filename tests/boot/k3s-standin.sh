#!/bin/sh
# Stand-in for the k3s binary in the boot test, served by the loopback release
# mirror and baked by imgbuild into /usr/local/bin/k3s. It records how and when
# it was started, then stays up like a real k3s so its unit remains active.
# The probe (boot-probe) reads the log back.
log=/var/log/k3s-standin.log
redact() {
  # Tokens are secrets: keep their sha256 only, so the report can be compared
  # with the secrets directory without showing them.
  while IFS= read -r line; do
    case "$line" in
      token:*|agent-token:*)
        k=${line%%:*}
        v=$(printf '%s' "${line#*:}" | sed -e 's/^ *//' -e 's/^"//' -e 's/"$//')
        echo "$k: <sha256 $(printf '%s' "$v" | sha256sum | cut -d' ' -f1)>" ;;
      *) echo "$line" ;;
    esac
  done
}
{
  echo "=== k3s start"
  echo "uptime: $(cut -d' ' -f1 /proc/uptime)"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "args: $*"
  echo "hostname: $(hostname)"
  echo "etc_hostname: $(cat /etc/hostname 2>/dev/null)"
  # Whether cloud-init had finished its network stage (hostname, users, keys)
  # and its final stage when k3s started: 0 means not yet.
  for u in cloud-init-local cloud-init cloud-config cloud-final; do
    echo "$u.service: $(systemctl show -p ActiveState --value $u.service) $(systemctl show -p ActiveEnterTimestampMonotonic --value $u.service)"
  done
  echo "env:"
  env | grep -v -e '^PWD=' -e '^SHLVL=' -e '^_=' | sort | sed 's/^/  /'
  for f in /etc/rancher/k3s/config.yaml /etc/rancher/k3s/config.yaml.d/*; do
    [ -e "$f" ] || continue
    echo "--- $f ($(stat -c '%a %U:%G' "$f"))"
    redact < "$f"
  done
  # k3s reads `token-file` / `agent-token-file` as the token itself: show
  # them as the `token` / `agent-token` they stand for.
  for key in token-file agent-token-file; do
    p=$(cat /etc/rancher/k3s/config.yaml /etc/rancher/k3s/config.yaml.d/* 2>/dev/null \
        | sed -n "s/^$key: *//p" | tr -d '"' | tail -n 1)
    [ -n "$p" ] && [ -e "$p" ] || continue
    echo "--- $p ($(stat -c '%a %U:%G' "$p"))"
    printf '%s: %s\n' "${key%-file}" "$(cat "$p")" | redact
  done
  echo "images: $(ls /var/lib/rancher/k3s/agent/images/ 2>/dev/null | tr '\n' ' ')"
  echo "node-password: $(stat -c '%a %U:%G' /etc/rancher/node/password 2>/dev/null)"
  echo "=== end"
} >>"$log" 2>&1
# k3s.service (server) is Type=notify: tell systemd we are ready from the main
# process itself (systemd-notify would be a child, which NotifyAccess=main drops).
if [ -n "${NOTIFY_SOCKET:-}" ]; then
  exec python3 -c '
import os, socket, time
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", addr)
while True:
    time.sleep(3600)
'
fi
exec sleep infinity
