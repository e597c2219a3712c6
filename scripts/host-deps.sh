#!/usr/bin/env bash
# Install what the controller (this host) needs from Debian, only if something is missing.
#  systemd-container, debootstrap: the lab machines and their image;  nftables: the firewall
#  tests load every rendered ruleset into throwaway network namespaces (its service stays off)
#  openssh-client: Ansible and `hastack ssh`;  wrk: the generator of `hastack bench` and the
#  benchmarks;  gcc, libssl-dev: `hastack bench` compiles wrk's client-certificate preload (the
#  direct requests need one; src/hastack/wrk_clientcert.c)
#  mariadb-server, openssl: the site's own tests start throwaway MariaDB servers (never the
#  host's service: it is kept from starting during the install)
#  prometheus, prometheus-alertmanager, prometheus-blackbox-exporter: promtool, amtool and
#  blackbox's --config.check for the monitoring tests (their services are kept from starting)
#  chromium, fonts-dejavu-core: the status page's e2e test renders it headless (screenshot)
#  fence-agents: the lab's Redfish endpoint is tested with Debian's own fence_redfish
set -euo pipefail
packages=(systemd-container debootstrap openssh-client iproute2 util-linux nftables wrk gcc libssl-dev
          mariadb-server mariadb-client openssl gzip
          prometheus prometheus-alertmanager prometheus-blackbox-exporter
          chromium fonts-dejavu-core fence-agents)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing Debian packages (${missing[*]}); run as root or apt-get install them" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
fi
trap 'if [ -n "$own_policy" ]; then rm -f "$policy"; fi' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Only their tools are wanted here: services this script installed do not start at boot either.
for p in "${missing[@]}"; do
  case "$p" in
    prometheus|prometheus-alertmanager|prometheus-blackbox-exporter)
      systemctl disable --quiet "$p.service" 2>/dev/null || true ;;
  esac
done
