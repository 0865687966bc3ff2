#!/usr/bin/env bash
# Deletes the slice and its queued resource (the work directory in the bucket stays).
source "$(dirname "$0")/common.sh"
"$GCLOUD" compute tpus queued-resources delete "$TPU_NAME" --zone="$ZONE" \
  "${PROJECT_FLAG[@]}" --force --quiet
