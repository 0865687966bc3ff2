"""launch/tpu/*.sh compose the right gcloud commands (a fake gcloud records them)."""

import os
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(ROOT, 'launch', 'tpu')

FAKE_GCLOUD = """#!/usr/bin/env bash
echo "$*" >> "$GCLOUD_LOG"
if [[ "$*" == *"queued-resources describe"* ]]; then echo ACTIVE; fi
"""


@pytest.fixture
def env(tmp_path):
  gcloud = tmp_path / 'gcloud'
  gcloud.write_text(FAKE_GCLOUD)
  gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
  log = tmp_path / 'calls.log'
  return {**os.environ, 'GCLOUD': str(gcloud), 'GCLOUD_LOG': str(log), 'TPU_NAME': 'unet-test',
          'ZONE': 'us-west4-a', 'BUCKET': 'my-bucket', 'POLL_SECONDS': '0'}, log


def _run(script, env, *args):
  return subprocess.run(['bash', os.path.join(TPU, script), *args], env=env,
                        capture_output=True, text=True, timeout=60)


def test_create_requests_a_spot_queued_resource_and_waits(env):
  env, log = env
  proc = _run('create.sh', env)
  assert proc.returncode == 0, proc.stderr
  calls = log.read_text().splitlines()
  assert calls[0] == ('compute tpus queued-resources create unet-test --node-id=unet-test '
                      '--zone=us-west4-a --accelerator-type=v5litepod-8 '
                      '--runtime-version=v2-alpha-tpuv5-lite --spot')
  assert 'queued-resources describe unet-test' in calls[1]
  assert 'unet-test is ACTIVE' in proc.stderr


def test_run_starts_the_distributed_sweep_on_every_worker(env):
  env, log = env
  proc = _run('run.sh', env, '--config=configs/paper.py:scheme=depth')
  assert proc.returncode == 0, proc.stderr
  call = log.read_text()
  assert 'compute tpus tpu-vm ssh unet-test --zone=us-west4-a --worker=all' in call
  assert ('launch/sweep.py --distributed --progress=false '
          '--workdir=/mnt/unet_jax/runs/unet-test --config=configs/paper.py:scheme=depth') in call


@pytest.mark.parametrize('missing, message', [('TPU_NAME', 'set TPU_NAME'),
                                              ('ZONE', 'set ZONE')])
def test_missing_settings_are_named(env, missing, message):
  env, _ = env
  del env[missing]
  proc = _run('create.sh', env)
  assert proc.returncode != 0 and message in proc.stderr


def test_bad_provisioning_lists_the_choices(env):
  env, log = env
  proc = _run('create.sh', {**env, 'PROVISIONING': 'cheap'})
  assert proc.returncode == 2
  assert 'valid: spot, best-effort, on-demand' in proc.stderr
  assert not log.exists()  # nothing was requested
