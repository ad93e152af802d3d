#!/usr/bin/env bash
# Installs what building and testing need, where it is missing. Safe to run again.
#   protoc      Debian's protobuf-compiler (tonic/prost code generation, etcd-client)
set -euo pipefail

apt_pkgs=()
command -v protoc >/dev/null 2>&1 || apt_pkgs+=(protobuf-compiler)

if ((${#apt_pkgs[@]})); then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing ${apt_pkgs[*]} (Debian packages)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi
