#!/usr/bin/env bash
# Every prepared accelerator measurement, as one script (BENCHMARKS.md "Accelerator").
#
# Runs on the lent device image as it is (jax, flax, optax, orbax-checkpoint,
# pandas, scipy, matplotlib; no ml_collections, tensorboardX, openpyxl or
# tensorflow-datasets): ml_collections travels as a wheel in .whl/ (fetch it here
# with the device README's `pip download` line: ml-collections==1.1.0), which
# this script installs into /tmp/site. Each step's table and JSON line go to
# $OUT (or ./accelerator-out) and to the log; a step that fails is reported and
# the next one runs.
#
#   bash benchmarks/accelerator.sh            # ~8 min on one H100, by estimate
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-accelerator-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
python3 -c 'import jax; print(jax.__version__, jax.devices())' | tee "$OUT/devices.txt"

step() {
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/log.txt"
  local began=$SECONDS
  timeout "${STEP_SECONDS:-280}" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.txt" | tee -a "$OUT/log.txt"
  echo "== $name: exit $rc after $((SECONDS - began)) s" | tee -a "$OUT/log.txt"
}

# Many experiments at once against one at a time (the card's central promise).
step throughput python3 benchmarks/sweep_throughput.py --experiments=16 --steps=200 \
  --chunk=50 --largest_bundle=1024 --largest_bundle_seconds=90
# A race of the strategies at 256x256, each run to convergence (configs/race.py).
step race256 python3 launch/sweep.py --config=configs/race.py:strategies \
  --config.image_size=256 --config.race.max_replicates=8 --workdir=/tmp/race256 \
  --progress=false
cp /tmp/race256/race.json "$OUT/race256.json" 2>/dev/null
step strategies python3 benchmarks/sweep_throughput.py --mix=strategies --experiments=16 \
  --steps=200 --chunk=50
