"""launch/tpu.py and launch/gke.py: the gcloud command sequences and the JobSet manifest, dry; the
remote start and stop commands run in a local shell; names that break Cloud's rules are refused."""
import os
import shlex
import subprocess
import sys
import time

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
  assert 'nohup' in job and '>> "$HOME"/sparse_tubes_logs/tubevit-b.log' in job
  assert job.endswith('> "$HOME"/sparse_tubes_logs/tubevit-b.pid)') and 'MEGASCALE' not in job
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
  assert '--worker=0' in logs
  assert logs[-1] == '--command=tail -n +1 -F "$HOME"/sparse_tubes_logs/tubevit-b.log'
  stop, = commands(capsys, 'stop', *V5E[:3])
  assert stop[-1] == '--command=kill -TERM "$(cat "$HOME"/sparse_tubes_logs/tubevit-b.pid)"'
  assert '--worker=all' in stop
  delete, = commands(capsys, 'delete', *V5E[:3], '--queued')
  assert delete[3:6] == ['queued-resources', 'delete', 'tubevit-b'] and '--force' in delete
  cmds = commands(capsys, 'run', *V5E[:3], '--accelerator_type=v5litepod-4', '--command=evaluate',
                  '--workdir=gs://my-bucket/runs/tubevit_b')
  assert 'python3 -m sparse_tubes evaluate --workdir=gs://my-bucket/runs/tubevit_b --checkpoint=watch' in cmds[-1][-1]


def test_up_two_slices(capsys):
  cmds = commands(capsys, 'up', *V5E, '--num_slices=2', '--spot')
  where = ['--zone=us-west4-a', '--project=my-project']
  # One queued resource, two nodes: tubevit-b-0 and tubevit-b-1.
  assert cmds[0] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', 'tubevit-b', *where,
                     '--node-count=2', '--node-prefix=tubevit-b', '--accelerator-type=v5litepod-16',
                     '--runtime-version=v2-alpha-tpuv5-lite', '--spot']
  assert cmds[1][0] == 'bash' and 'queued-resources describe tubevit-b' in cmds[1][-1]
  assert cmds[2][:4] == ['git', '-C', REPO, 'archive']
  scp, install, (ip,), start = cmds[3:5], cmds[5:7], cmds[7:8], cmds[8:]
  assert [c[5] for c in scp] == [f'{cmds[2][-2].split("=", 1)[1]}', cmds[2][-2].split('=', 1)[1]]
  assert [c[6] for c in scp] == ['tubevit-b-0:/tmp/', 'tubevit-b-1:/tmp/']
  assert [c[5] for c in install] == ['tubevit-b-0', 'tubevit-b-1']
  assert ip == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'tubevit-b-0', *where,
                '--format=value(networkEndpoints[0].ipAddress)']
  assert len(start) == 2
  for i, c in enumerate(start):  # every worker (--worker=all) of slice i
    assert c[4:6] == ['ssh', f'tubevit-b-{i}'] and '--worker=all' in c
    job = c[-1].removeprefix('--command=')
    assert (f'export MEGASCALE_COORDINATOR_ADDRESS=IP-OF-tubevit-b-0-WORKER-0:8080 '
            f'MEGASCALE_NUM_SLICES=2 MEGASCALE_SLICE_ID={i} MEGASCALE_PORT=8080 && ') in job
    assert '--config.data_dir=gs://my-bucket/tfds --config.mesh.slices=2' in job
  stop = commands(capsys, 'stop', *V5E[:3], '--num_slices=2')
  assert [c[5] for c in stop] == ['tubevit-b-0', 'tubevit-b-1']
  delete, = commands(capsys, 'delete', *V5E[:3], '--num_slices=2')  # queued: its nodes go too
  assert delete[3:6] == ['queued-resources', 'delete', 'tubevit-b'] and '--force' in delete
  with pytest.raises(SystemExit):  # the launcher owns config.mesh.slices
    tpu.main(['up', *V5E, '--num_slices=2', '--config.mesh.slices=1', '--dry_run'])


def fake_python(tmp_path):
  """A `python3` that records its pid, argv and MegaScale environment, then waits for SIGTERM."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'python3').write_text(
      '#!/bin/bash\n'
      'trap \'echo TERM > "$HOME/got_term"; exit 0\' TERM\n'
      'printf "%s\\n" "$@" > "$HOME/argv"; env | grep ^MEGASCALE | sort > "$HOME/env"\n'
      'echo $$ > "$HOME/job_pid"\n'
      'while true; do sleep 0.05; done\n')
  (bin_dir / 'python3').chmod(0o755)
  (tmp_path / 'sparse_tubes').mkdir()
  return dict(os.environ, HOME=str(tmp_path), PATH=f'{bin_dir}:{os.environ["PATH"]}')


def wait_for(path, seconds=10):
  deadline = time.time() + seconds
  while not (path.exists() and path.read_text().strip()) and time.time() < deadline:
    time.sleep(0.05)
  return path.read_text()


def test_start_and_stop_commands_run_in_a_shell(tmp_path, capsys):
  """The remote commands, run by bash here as a worker runs them: the job gets every argument
  intact (shell metacharacters included), its environment, and `stop` signals the job itself."""
  env = fake_python(tmp_path)
  try:
    run_start_and_stop(tmp_path, env, capsys)
  finally:  # never leave the fake job behind
    if (tmp_path / 'job_pid').exists() and not (tmp_path / 'got_term').exists():
      os.kill(int((tmp_path / 'job_pid').read_text()), 9)


def run_start_and_stop(tmp_path, env, capsys):
  odd = '--config.note=a b;touch PWNED $(touch PWNED2) `touch PWNED3`'
  cmds = commands(capsys, 'up', *V5E, '--num_slices=2', odd)
  start = cmds[-1][-1].removeprefix('--command=')   # slice 1
  subprocess.run(['bash', '-c', start], env=env, cwd=tmp_path, check=True, timeout=30)
  wait_for(tmp_path / 'job_pid')
  argv = wait_for(tmp_path / 'argv').splitlines()
  assert argv[:3] == ['-m', 'sparse_tubes', 'train'] and argv[-1] == odd
  assert not list(tmp_path.glob('**/PWNED*'))
  assert wait_for(tmp_path / 'env').splitlines() == [
      'MEGASCALE_COORDINATOR_ADDRESS=IP-OF-tubevit-b-0-WORKER-0:8080', 'MEGASCALE_NUM_SLICES=2',
      'MEGASCALE_PORT=8080', 'MEGASCALE_SLICE_ID=1']
  # The pid kept for `stop` is the job's own (not a shell's around it).
  pid_file = tmp_path / 'sparse_tubes_logs' / 'tubevit-b.pid'
  assert pid_file.read_text().strip() == (tmp_path / 'job_pid').read_text().strip()
  stop = commands(capsys, 'stop', *V5E[:3], '--num_slices=2')[1][-1].removeprefix('--command=')
  subprocess.run(['bash', '-c', stop], env=env, check=True, timeout=30)
  assert wait_for(tmp_path / 'got_term').strip() == 'TERM'


@pytest.mark.parametrize('flag,why', [
    ('--name=tv;touch x', 'TPU names are a lowercase letter'),
    ('--name=$(reboot)', 'TPU names'),
    ('--name=TubeViT', 'TPU names'),
    ('--name=tubevit-', 'TPU names'),
    ('--name=' + 'a' * 64, 'TPU names'),
    ('--zone=us-west4-a;id', 'not a Google Cloud zone'),
    ('--zone=us west4', 'not a Google Cloud zone'),
    ('--project=my-project`id`', 'not a Google Cloud project ID'),
    ('--project=abc', 'not a Google Cloud project ID'),
    ('--runtime_version=v2 && id', 'not a TPU software version'),
])
def test_names_against_cloud_rules(flag, why, capsys):
  key = flag.split('=', 1)[0]
  argv = [a for a in V5E if not a.startswith(key + '=')] + [flag]
  for sub in ('up', 'stop'):
    with pytest.raises(SystemExit):
      tpu.main([sub, *argv, '--dry_run'])
    err = capsys.readouterr()
    assert why in err.err and 'gcloud' not in err.out   # refused before any command
  # Nodes of N slices are NAME-i: the name leaves room for the suffix.
  with pytest.raises(SystemExit):
    tpu.main(['stop', '--name=' + 'a' * 62, '--zone=us-west4-a', '--num_slices=2', '--dry_run'])
  assert 'its nodes are named' in capsys.readouterr().err
  # Rules that accept what Cloud accepts.
  assert tpu.PROJECT_RULE.fullmatch('example.com:my-project')
  assert tpu.ZONE_RULE.fullmatch('northamerica-northeast1-b')


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
  assert 'env' not in container   # one slice: nothing but what GKE sets


def test_gke_jobset_two_slices(capsys):
  assert gke.main(['--name=tubevit-b', '--accelerator_type=v5litepod-16', '--num_slices=2',
                   '--image=us-docker.pkg.dev/p/r/i', *V5E[4:], '--dry_run']) == 0
  m = yaml.safe_load(capsys.readouterr().out)
  job, = m['spec']['replicatedJobs']   # one replicated job, one Job per slice
  assert job['replicas'] == 2 and job['name'] == 'slice' and m['spec']['network']['enableDNSHostnames']
  assert job['template']['spec']['parallelism'] == 4   # v5litepod-16: 4 hosts per slice
  container, = job['template']['spec']['template']['spec']['containers']
  env = {e['name']: e.get('value', e.get('valueFrom')) for e in container['env']}
  assert env == {
      'MEGASCALE_COORDINATOR_ADDRESS': 'tubevit-b-slice-0-0.tubevit-b:8080',
      'MEGASCALE_NUM_SLICES': '2', 'MEGASCALE_PORT': '8080',
      'MEGASCALE_SLICE_ID': {'fieldRef': {'fieldPath': "metadata.labels['jobset.sigs.k8s.io/job-index']"}}}
  assert container['command'][-1].endswith('--config.mesh.slices=2')
  with pytest.raises(SystemExit):
    gke.main(['--name=Tube;ViT', '--image=i', *V5E[4:], '--dry_run'])
