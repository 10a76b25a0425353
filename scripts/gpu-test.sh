#!/usr/bin/env bash
# The GPU path without a GPU: builds penni-train with the wgpu feature (the build check; the
# cuda feature cannot be built here: cubecl-cuda's build script downloads an LLVM bundle from
# GitHub, and these machines reach package registries only), installs Mesa's software Vulkan
# driver (lavapipe, Debian mesa-vulkan-drivers) if no Vulkan driver is present, and runs
# tests/gpu.rs: a small CNN trained on wgpu must match the same training on the CPU. Under CI=true a wgpu device that cannot start fails the test.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
if ! ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
  if command -v apt-get >/dev/null; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing Debian package mesa-vulkan-drivers (software Vulkan) ..."
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mesa-vulkan-drivers >/dev/null
  else
    echo "warning: no Vulkan driver and no apt-get; the wgpu test will find no adapter" >&2
  fi
fi
cargo test --locked --profile gpu-test -p penni-train --features wgpu --test gpu "$@"
