#!/usr/bin/env bash
# Starts the sweep on every worker (jax.distributed.initialize() finds the
# slice by itself), detached, logging to the shared work directory. Running it
# again after a preemption resumes from the newest checkpoint.
#
#   TPU_NAME=unet-sweep ZONE=us-west4-a launch/tpu/run.sh --config=configs/paper.py
source "$(dirname "$0")/common.sh"
args=$(printf ' %q' "$@")

on_all_workers "set -e
  cd ~/$REPO_DIR && mkdir -p $WORKDIR/logs
  nohup python3 launch/sweep.py --distributed --progress=false --workdir=$WORKDIR$args \
    > $WORKDIR/logs/worker-\$(hostname).log 2>&1 < /dev/null &
  echo started on \$(hostname)"
echo "logs: $WORKDIR/logs/ (also gs://$BUCKET/${WORKDIR#"$MOUNT"/}/logs/)" >&2
echo "stop cleanly (checkpoint, then exit): launch/tpu/stop.sh; follow: launch/tpu/watch.sh" >&2
