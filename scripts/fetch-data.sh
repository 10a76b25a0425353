#!/usr/bin/env bash
# Installs the datasets penni's demo, tests and experiments use. Fashion-MNIST comes from
# Debian's package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist).
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/train-images-idx3-ubyte.gz" ] && [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; then
  echo "Fashion-MNIST present in $dir"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "error: Fashion-MNIST is missing and apt-get is not available; download it and pass --data-dir or set PENNI_DATA_DIR" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing Debian package dataset-fashion-mnist ..."
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
echo "Fashion-MNIST installed in $dir"
