"""Train a config on a Cloud TPU slice: create it, ship this checkout, run, watch, stop, delete.

  python launch/tpu.py up --name=tubevit-b --zone=us-west4-a --project=my-project \
      --accelerator_type=v5litepod-16 --config=configs/kinetics400/tubevit_b.py \
      --workdir=gs://my-bucket/runs/tubevit_b --data_dir=gs://my-bucket/tfds --spot
  python launch/tpu.py logs   --name=tubevit-b --zone=us-west4-a --project=my-project
  python launch/tpu.py status --name=tubevit-b ...
  python launch/tpu.py stop   --name=tubevit-b ...   # SIGTERM: every worker checkpoints and exits
  python launch/tpu.py delete --name=tubevit-b ...

Sub-commands:
  create   the TPU VM (or, with --queued, a queued resource that waits for capacity)
  run      copy this checkout to every worker (a git archive of the commit HEAD is at), install
           `.[tpu]`, then start `python -m sparse_tubes COMMAND` on all workers at once in the
           background; each worker keeps its log in ~/sparse_tubes_logs/NAME.log. --command=evaluate
           runs the continuous evaluator instead (`evaluate --checkpoint=watch`), on its own small slice.
  up       create + run
  status   the slice's state (and the queued resource's)
  logs     stream worker 0's log
  stop     SIGTERM to the job on every worker (each saves a checkpoint; `run` again resumes)
  delete   delete the slice (and the queued resource)

Every gcloud command goes through `gcloud()`; --dry_run prints them all, in order, and runs none.
`--config.field=value` flags are passed through to the command on the workers.
"""
import argparse
import os
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sparse_tubes import chips

REMOTE_DIR = '~/sparse_tubes'       # the checkout, replaced by each `run`
LOG_DIR = '~/sparse_tubes_logs'     # logs and the job's pid, kept across runs
SUBCOMMANDS = ('create', 'run', 'up', 'status', 'logs', 'stop', 'delete')


class Runner:
  """Runs (or, dry, prints) commands in order; the one place a gcloud call is made."""

  def __init__(self, dry_run: bool):
    self.dry_run = dry_run
    self.commands: list[list[str]] = []

  def __call__(self, argv: list[str], *, check: bool = True) -> int:
    self.commands.append(argv)
    print(('' if self.dry_run else '+ ') + shlex.join(argv), flush=True)
    if self.dry_run:
      return 0
    result = subprocess.run(argv)
    if check and result.returncode:
      sys.exit(f'Command failed ({result.returncode}): {shlex.join(argv)}')
    return result.returncode


def gcloud(run: Runner, args, *words, **flags) -> int:
  """`gcloud compute tpus WORDS --zone --project --FLAGS`: every gcloud call goes through here."""
  argv = ['gcloud', 'compute', 'tpus', *words, f'--zone={args.zone}']
  if args.project:
    argv.append(f'--project={args.project}')
  check = flags.pop('check', True)
  for key, value in flags.items():
    flag = '--' + key.replace('_', '-')
    if value is True:
      argv.append(flag)
    elif value not in (None, False):
      argv.append(f'{flag}={value}')
  return run(argv, check=check)


def parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('subcommand', choices=SUBCOMMANDS)
  parser.add_argument('--name', required=True, help='The TPU VM (and queued resource) name.')
  parser.add_argument('--zone', required=True, help='e.g. us-west4-a (v5e), us-east5-b (v6e).')
  parser.add_argument('--project', default=None, help='Default: gcloud config get project.')
  parser.add_argument('--accelerator_type', default='v5litepod-16',
                      help='v5litepod-16, v6e-16, v4-32, v5p-64, ... (v4/v5p count cores).')
  parser.add_argument('--runtime_version', default=None,
                      help="TPU VM image; default: the generation's JAX image (sparse_tubes/chips.py).")
  parser.add_argument('--config', default=None, help='configs/...py[:arg], relative to the repo.')
  parser.add_argument('--workdir', default=None, help='gs://bucket/runs/NAME: checkpoints and logs.')
  parser.add_argument('--data_dir', default=None, help='gs://bucket/tfds: the prepared datasets.')
  parser.add_argument('--command', default='train', choices=('train', 'evaluate'),
                      help='run: train, or the continuous evaluator of --workdir.')
  capacity = parser.add_mutually_exclusive_group()
  capacity.add_argument('--spot', action='store_true', help='Spot capacity (can be preempted).')
  capacity.add_argument('--reserved', action='store_true', help="Your project's reservation.")
  parser.add_argument('--queued', action='store_true',
                      help='Create through a queued resource (waits until capacity is free).')
  parser.add_argument('--dry_run', action='store_true', help='Print the commands, run none.')
  args, rest = parser.parse_known_args(argv)
  overrides = [a for a in rest if a.startswith('--config.')]
  unknown = [a for a in rest if not a.startswith('--config.')]
  if unknown:
    parser.error(f'unknown arguments {unknown}; config fields are given as --config.field=value.')
  args.topology = chips.from_accelerator_type(args.accelerator_type)
  args.runtime_version = args.runtime_version or args.topology.generation.runtime_version
  if args.subcommand in ('run', 'up'):
    if not args.workdir:
      parser.error('--workdir is required to run (a gs:// path every worker can write).')
    if args.command == 'train' and not args.config:
      parser.error('--config is required to train, e.g. --config=configs/kinetics400/tubevit_b.py')
  return args, overrides


def job_argv(args, overrides) -> list[str]:
  """The `python -m sparse_tubes ...` command every worker runs."""
  argv = ['python3', '-m', 'sparse_tubes', args.command, f'--workdir={args.workdir}']
  if args.config:
    argv.append(f'--config={args.config}')
  if args.command == 'evaluate':
    argv.append('--checkpoint=watch')
  if args.data_dir:
    argv.append(f'--config.data_dir={args.data_dir}')
  return argv + list(overrides)


def commit() -> str:
  """The commit this checkout is at; uncommitted changes would not reach the workers."""
  sha = subprocess.run(['git', '-C', REPO, 'rev-parse', 'HEAD'], capture_output=True, text=True,
                       check=True).stdout.strip()
  dirty = subprocess.run(['git', '-C', REPO, 'status', '--porcelain', '--untracked-files=no'],
                         capture_output=True, text=True, check=True).stdout.strip()
  if dirty:
    print(f'Note: uncommitted changes are not shipped; the workers get commit {sha[:12]}.',
          file=sys.stderr)
  return sha


def create(run, args):
  capacity = dict(spot=args.spot, reserved=args.reserved)
  if args.queued:
    return gcloud(run, args, 'queued-resources', 'create', args.name, node_id=args.name,
                  accelerator_type=args.accelerator_type, runtime_version=args.runtime_version,
                  **capacity)
  return gcloud(run, args, 'tpu-vm', 'create', args.name, accelerator_type=args.accelerator_type,
                version=args.runtime_version, **capacity)


def wait_ready(run, args):
  """A queued resource becomes a TPU VM when capacity frees up: wait for ACTIVE."""
  if args.queued:
    loop = (f'until gcloud compute tpus queued-resources describe {args.name} --zone={args.zone}'
            + (f' --project={args.project}' if args.project else '')
            + " --format='value(state.state)' | grep -q ACTIVE; do sleep 60; done")
    run(['bash', '-c', loop])


def ssh(run, args, command: str, worker: str = 'all', check: bool = True):
  return gcloud(run, args, 'tpu-vm', 'ssh', args.name, worker=worker, command=command, check=check)


def run_job(run, args, overrides):
  sha = commit()
  archive = f'/tmp/sparse_tubes-{sha[:12]}.tar.gz'
  run(['git', '-C', REPO, 'archive', '--format=tar.gz', f'--output={archive}', sha])
  gcloud(run, args, 'tpu-vm', 'scp', archive, f'{args.name}:/tmp/', worker='all')
  remote_archive = f'/tmp/{os.path.basename(archive)}'
  ssh(run, args, f'rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar xzf {remote_archive} -C '
                 f'{REMOTE_DIR} && cd {REMOTE_DIR} && python3 -m pip install -q -U pip && '
                 f"python3 -m pip install -q -e '.[tpu]'")
  log = f'{LOG_DIR}/{args.name}.log'
  # setsid + nohup: the job outlives the ssh session; its pid is kept for `stop`.
  ssh(run, args, f'mkdir -p {LOG_DIR} && cd {REMOTE_DIR} && setsid nohup {shlex.join(job_argv(args, overrides))} '
                 f'>> {log} 2>&1 < /dev/null & echo $! > {LOG_DIR}/{args.name}.pid')
  print(f'Started {args.command} of commit {sha[:12]} on every worker of {args.name}; '
        f'python launch/tpu.py logs --name={args.name} --zone={args.zone} follows worker 0.',
        flush=True)


def main(argv=None) -> int:
  args, overrides = parse(sys.argv[1:] if argv is None else argv)
  run = Runner(args.dry_run)
  sub = args.subcommand
  if sub in ('create', 'up'):
    create(run, args)
    wait_ready(run, args)
  if sub in ('run', 'up'):
    run_job(run, args, overrides)
  elif sub == 'status':
    if args.queued:
      gcloud(run, args, 'queued-resources', 'describe', args.name)
    gcloud(run, args, 'tpu-vm', 'describe', args.name)
    ssh(run, args, f'tail -n 2 {LOG_DIR}/{args.name}.log', check=False)
  elif sub == 'logs':
    ssh(run, args, f'tail -n +1 -F {LOG_DIR}/{args.name}.log', worker='0')
  elif sub == 'stop':
    # SIGTERM, as a maintenance event sends: the job checkpoints and exits; `run` resumes it.
    ssh(run, args, f'kill -TERM $(cat {LOG_DIR}/{args.name}.pid)', check=False)
  elif sub == 'delete':
    if args.queued:
      gcloud(run, args, 'queued-resources', 'delete', args.name, force=True, quiet=True)
    else:
      gcloud(run, args, 'tpu-vm', 'delete', args.name, quiet=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
