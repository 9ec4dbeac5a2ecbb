"""launch/tpu.py and launch/gke.py: the gcloud command sequences and the JobSet manifest, dry."""
import os
import shlex
import sys

import pytest
import yaml

from sparse_tubes import chips

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, 'launch'))
import gke  # noqa: E402
import tpu  # noqa: E402

V5E = ['--name=tubevit-b', '--zone=us-west4-a', '--project=my-project',
       '--accelerator_type=v5litepod-16', '--config=configs/kinetics400/tubevit_b.py',
       '--workdir=gs://my-bucket/runs/tubevit_b', '--data_dir=gs://my-bucket/tfds']


def commands(capsys, *argv):
  assert tpu.main([*argv, '--dry_run']) == 0
  return [shlex.split(line) for line in capsys.readouterr().out.splitlines()
          if line.startswith(('gcloud', 'git', 'bash'))]


def test_up_v5e_16_from_a_paper_config(capsys):
  cmds = commands(capsys, 'up', *V5E, '--spot', '--config.total_steps=1000')
  where = ['--zone=us-west4-a', '--project=my-project']
  assert cmds[0] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'tubevit-b', *where,
                     '--accelerator-type=v5litepod-16', '--version=v2-alpha-tpuv5-lite', '--spot']
  assert cmds[1][:4] == ['git', '-C', REPO, 'archive'] and cmds[1][-1] == tpu.commit()
  archive = cmds[1][-2].split('=', 1)[1]
  assert cmds[2] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', archive, 'tubevit-b:/tmp/',
                     *where, '--worker=all']
  install, start = cmds[3], cmds[4]
  for c in (install, start):
    assert c[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'tubevit-b'] and '--worker=all' in c
  assert f'tar xzf /tmp/{os.path.basename(archive)}' in install[-1]
  assert "pip install -q -e '.[tpu]'" in install[-1]
  job = start[-1].removeprefix('--command=')
  assert ('python3 -m sparse_tubes train --workdir=gs://my-bucket/runs/tubevit_b '
          '--config=configs/kinetics400/tubevit_b.py --config.data_dir=gs://my-bucket/tfds '
          '--config.total_steps=1000') in job
  assert 'nohup' in job and '>> ~/sparse_tubes_logs/tubevit-b.log' in job and job.endswith('.pid')
  assert len(cmds) == 5


def test_queued_reserved_v4_and_v5p_defaults(capsys):
  cmds = commands(capsys, 'create', *V5E[:3], '--accelerator_type=v4-32', '--queued', '--reserved')
  assert cmds[0] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'tubevit-b',
                     '--zone=us-west4-a', '--project=my-project', '--node-id=tubevit-b',
                     '--accelerator-type=v4-32', '--runtime-version=tpu-ubuntu2204-base',
                     '--reserved']
  assert cmds[1][0] == 'bash' and 'grep -q ACTIVE' in cmds[1][-1]  # waits for the capacity
  cmds = commands(capsys, 'create', *V5E[:3], '--accelerator_type=v5p-64')
  assert '--version=v2-alpha-tpuv5' in cmds[0] and 'tpu-vm' in cmds[0]


def test_logs_stop_delete_and_evaluate(capsys):
  logs, = commands(capsys, 'logs', *V5E[:3])
  assert '--worker=0' in logs and logs[-1] == '--command=tail -n +1 -F ~/sparse_tubes_logs/tubevit-b.log'
  stop, = commands(capsys, 'stop', *V5E[:3])
  assert stop[-1] == '--command=kill -TERM $(cat ~/sparse_tubes_logs/tubevit-b.pid)'
  assert '--worker=all' in stop
  delete, = commands(capsys, 'delete', *V5E[:3], '--queued')
  assert delete[3:6] == ['queued-resources', 'delete', 'tubevit-b'] and '--force' in delete
  cmds = commands(capsys, 'run', *V5E[:3], '--accelerator_type=v5litepod-4', '--command=evaluate',
                  '--workdir=gs://my-bucket/runs/tubevit_b')
  assert 'python3 -m sparse_tubes evaluate --workdir=gs://my-bucket/runs/tubevit_b --checkpoint=watch' in cmds[-1][-1]


def test_bad_flags_fail_before_any_command(capsys):
  with pytest.raises(SystemExit):
    tpu.main(['up', *V5E[:4], '--dry_run'])  # no --config, no --workdir
  with pytest.raises(SystemExit):
    tpu.main(['up', *V5E, '--spot', '--reserved', '--dry_run'])
  with pytest.raises(ValueError, match='accelerator_type'):
    tpu.main(['create', *V5E[:3], '--accelerator_type=v5e-16', '--dry_run'])


def test_accelerator_types_and_topologies():
  cases = {'v5litepod-16': ('v5e:4x4', 4), 'v5litepod-8': ('v5e:2x4', 1), 'v4-32': ('v4:2x2x4', 4),
           'v4-8': ('v4:2x2x1', 1), 'v5p-64': ('v5p:2x4x4', 8), 'v6e-256': ('v6e:16x16', 64)}
  for accelerator, (name, hosts) in cases.items():
    topo = chips.from_accelerator_type(accelerator)
    assert (topo.name, topo.hosts, topo.accelerator_type) == (name, hosts, accelerator)
    assert chips.parse(name) == topo
  with pytest.raises(ValueError, match='GENERATION:GRID'):
    chips.parse('v5e-16')
  with pytest.raises(ValueError, match='2D grid'):
    chips.parse('v5e:2x2x2')


def test_gke_jobset_manifest(capsys):
  assert gke.main(['--name=tubevit-b', '--accelerator_type=v5p-64', '--image=us-docker.pkg.dev/p/r/i',
                   *V5E[4:], '--dry_run', '--config.microbatches=2']) == 0
  m = yaml.safe_load(capsys.readouterr().out)
  assert m['kind'] == 'JobSet' and m['metadata']['name'] == 'tubevit-b'
  job, = m['spec']['replicatedJobs']
  assert job['replicas'] == 1
  spec = job['template']['spec']
  assert spec['parallelism'] == spec['completions'] == 8  # v5p-64: 32 chips on 8 hosts
  pod = spec['template']['spec']
  assert pod['nodeSelector'] == {'cloud.google.com/gke-tpu-accelerator': 'tpu-v5p-slice',
                                 'cloud.google.com/gke-tpu-topology': '2x4x4'}
  container, = pod['containers']
  assert container['resources']['limits']['google.com/tpu'] == 4
  assert container['command'][-1] == (
      'python3 -m sparse_tubes train --workdir=gs://my-bucket/runs/tubevit_b '
      '--config=configs/kinetics400/tubevit_b.py --config.data_dir=gs://my-bucket/tfds '
      '--config.microbatches=2')
