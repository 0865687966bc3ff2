#!/usr/bin/env bash
# Sends SIGTERM to the sweep on every worker: it saves a checkpoint at the next
# chunk boundary and exits; run.sh resumes it.
source "$(dirname "$0")/common.sh"
on_all_workers "pkill -TERM -f 'launch/sweep.py' || true"
