#!/usr/bin/env bash
# Requests a TPU VM (or pod slice) as a queued resource, spot by default, and
# waits until it is ACTIVE.
#
#   TPU_NAME=unet-sweep ZONE=us-west4-a launch/tpu/create.sh
#   ACCELERATOR_TYPE=v5litepod-32 PROVISIONING=best-effort ... launch/tpu/create.sh
source "$(dirname "$0")/common.sh"

case "$PROVISIONING" in
  spot) MODE=(--spot) ;;
  best-effort) MODE=(--best-effort) ;;
  on-demand) MODE=() ;;
  *) echo "PROVISIONING=$PROVISIONING; valid: spot, best-effort, on-demand" >&2; exit 2 ;;
esac

"$GCLOUD" compute tpus queued-resources create "$TPU_NAME" --node-id="$TPU_NAME" \
  --zone="$ZONE" "${PROJECT_FLAG[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
  --runtime-version="$RUNTIME_VERSION" "${MODE[@]}"

echo "waiting for $TPU_NAME to become ACTIVE (a spot request can wait for capacity)" >&2
while true; do
  state=$("$GCLOUD" compute tpus queued-resources describe "$TPU_NAME" --zone="$ZONE" \
    "${PROJECT_FLAG[@]}" --format='value(state.state)')
  case "$state" in
    ACTIVE) echo "$TPU_NAME is ACTIVE" >&2; break ;;
    FAILED|SUSPENDED) echo "$TPU_NAME is $state; see: gcloud compute tpus queued-resources describe $TPU_NAME --zone=$ZONE" >&2; exit 1 ;;
    *) sleep "${POLL_SECONDS:-30}" ;;
  esac
done
