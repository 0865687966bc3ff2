#!/usr/bin/env bash
# Copies this checkout to every worker, installs it with JAX for TPU and mounts
# the bucket that holds the shared work directory.
#
#   BUCKET=my-bucket TPU_NAME=unet-sweep ZONE=us-west4-a launch/tpu/install.sh
source "$(dirname "$0")/common.sh"
: "${BUCKET:?set BUCKET, a Cloud Storage bucket for the work directory}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"

# The working tree as committed (git archive), so no local runs/ or caches travel.
archive="$(mktemp -t unet_jax.XXXXXX.tar.gz)"
git -C "$ROOT" archive --format=tar.gz -o "$archive" HEAD
"$GCLOUD" compute tpus tpu-vm scp "$archive" "$TPU_NAME:unet_jax.tar.gz" --zone="$ZONE" \
  "${PROJECT_FLAG[@]}" --worker=all
rm -f "$archive"

on_all_workers "set -e
  mkdir -p ~/$REPO_DIR && tar -xzf ~/unet_jax.tar.gz -C ~/$REPO_DIR
  python3 -m pip install -q -U 'jax[tpu]' -e ~/$REPO_DIR
  if ! command -v gcsfuse >/dev/null; then
    export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s)
    echo \"deb https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list
    curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -
    sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
  fi
  sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
  mountpoint -q $MOUNT || gcsfuse --implicit-dirs $BUCKET $MOUNT
  python3 -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
