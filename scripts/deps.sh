#!/bin/sh
# Installs what shakeshake needs from Debian 12 (bookworm): the compiler and
# CMake, oneDNN (the cpu backend; Debian's is built with its OpenCL GPU
# runtime, and its CMake package needs OpenCL's headers and loader, which it
# only recommends), jansson and zlib (the engine); Lua 5.4,
# SQLite, libgit2, libcurl, libarchive, OpenSSL's libcrypto and cairo (the
# sweep orchestrator); cmocka and git (tests); the Fashion-MNIST data set
# (real images, no download). Runs apt-get through sudo unless already root.
# Safe to run again.
set -eu
pkgs="build-essential cmake pkg-config git libdnnl-dev ocl-icd-opencl-dev
      libjansson-dev zlib1g-dev liblua5.4-dev libsqlite3-dev libgit2-dev
      libcurl4-openssl-dev libarchive-dev libssl-dev libcairo2-dev libcmocka-dev
      dataset-fashion-mnist"
if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
