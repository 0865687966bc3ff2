# Settings shared by the TPU scripts; every one can be overridden from the
# environment. Sourced, not run.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME, e.g. export TPU_NAME=unet-sweep}"
: "${ZONE:?set ZONE, e.g. export ZONE=us-west4-a (a zone with your TPU quota)}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-8}"    # v5litepod-32 = 8 hosts
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
PROVISIONING="${PROVISIONING:-spot}"                    # spot | best-effort | on-demand
# The work directory must be shared by every worker (each reads checkpoints
# on resume; worker 0 writes): a Cloud Storage bucket mounted with gcsfuse.
BUCKET="${BUCKET:-}"
MOUNT="${MOUNT:-/mnt/unet_jax}"
WORKDIR="${WORKDIR:-$MOUNT/runs/${TPU_NAME}}"
REPO_DIR="${REPO_DIR:-unet_jax}"                        # on the workers, under ~
GCLOUD="${GCLOUD:-gcloud}"
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then PROJECT_FLAG=(--project="$PROJECT"); fi

# Runs a command on every worker of the slice.
on_all_workers() {
  "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" "${PROJECT_FLAG[@]}" \
    --worker=all --command="$1"
}
