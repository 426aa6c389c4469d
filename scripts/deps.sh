#!/bin/sh
# Installs what shakeshake needs from Debian 12 (bookworm): the compiler and
# CMake, oneDNN (the cpu backend), jansson, zlib, cmocka (tests) and the
# Fashion-MNIST data set (real images, no download). Runs apt-get through
# sudo unless already root. Safe to run again.
set -eu
pkgs="build-essential cmake pkg-config libdnnl-dev libjansson-dev zlib1g-dev
      libcmocka-dev dataset-fashion-mnist"
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
