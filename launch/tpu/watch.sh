#!/usr/bin/env bash
# Keeps a spot sweep going: polls the queued resource; when it was preempted
# (SUSPENDED/FAILED or gone), deletes it, requests a new one, installs and
# starts the same sweep, which resumes from the shared work directory. Stops
# when the sweep has written report.md. Start it after create.sh, install.sh
# and run.sh, with run.sh's arguments.
#
#   BUCKET=my-bucket TPU_NAME=unet-sweep ZONE=us-west4-a launch/tpu/watch.sh --config=configs/paper.py
source "$(dirname "$0")/common.sh"
HERE="$(dirname "$0")"
: "${BUCKET:?set BUCKET}"

while true; do
  if "$GCLOUD" storage ls "gs://$BUCKET/${WORKDIR#"$MOUNT"/}/report.md" >/dev/null 2>&1; then
    echo "sweep finished: gs://$BUCKET/${WORKDIR#"$MOUNT"/}/report.md" >&2
    exit 0
  fi
  state=$("$GCLOUD" compute tpus queued-resources describe "$TPU_NAME" --zone="$ZONE" \
    "${PROJECT_FLAG[@]}" --format='value(state.state)' 2>/dev/null || echo GONE)
  case "$state" in
    ACTIVE) ;;
    SUSPENDED|FAILED|GONE)
      echo "$(date -u +%FT%TZ) $TPU_NAME is $state: requesting a new slice and resuming" >&2
      "$HERE/delete.sh" || true
      "$HERE/create.sh" && "$HERE/install.sh" && "$HERE/run.sh" "$@" ;;
    *) ;;  # WAITING_FOR_RESOURCES, PROVISIONING, ...
  esac
  sleep "${POLL_SECONDS:-120}"
done
