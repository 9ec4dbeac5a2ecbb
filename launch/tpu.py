"""Train a config on Cloud TPU slices: create them, ship this checkout, run, watch, stop, delete.

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
  status   the slices' state (and the queued resource's)
  logs     stream worker 0's log (of slice 0)
  stop     SIGTERM to the job on every worker (each saves a checkpoint; `run` again resumes)
  delete   delete the slices (and the queued resource)

Multislice (--num_slices=N > 1, docs/multislice.md): one queued resource NAME holds N slices
(nodes NAME-0 ... NAME-N-1, each of --accelerator_type) joined over the data-centre network. Every
worker of slice i starts with MEGASCALE_COORDINATOR_ADDRESS (worker 0 of slice 0), MEGASCALE_NUM_SLICES,
MEGASCALE_SLICE_ID=i and MEGASCALE_PORT, from which JAX forms one runtime over all slices, and the
job gets --config.mesh.slices=N so that only the data axis crosses slices. `status`, `logs`, `stop`
and `delete` take the same --num_slices.

Every gcloud command goes through `gcloud()`; --dry_run prints them all, in order, and runs none.
`--config.field=value` flags are passed through to the command on the workers. Names, zones and
projects are checked against Google Cloud's naming rules before anything runs, and every value put in
a remote shell command is shell-quoted.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sparse_tubes import chips  # noqa: E402

# On the workers, under $HOME. Remote commands spell them "$HOME"/DIR: a quoted '~' would not expand.
REMOTE_DIR = '"$HOME"/sparse_tubes'       # the checkout, replaced by each `run`
LOG_DIR = '"$HOME"/sparse_tubes_logs'     # logs and the job's pid, kept across runs
SUBCOMMANDS = ('create', 'run', 'up', 'status', 'logs', 'stop', 'delete')
# The port the MegaScale runtime of each worker listens on for its peers in other slices (JAX's
# and Cloud TPU's default).
MEGASCALE_PORT = 8080

# Google Cloud's naming rules (checked before any command is built; values are quoted as well).
# TPU node and queued-resource IDs: RFC 1035 labels, a lowercase letter, then up to 62 lowercase
# letters, digits or hyphens, not ending in a hyphen.
NAME_RULE = re.compile(r'[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?')
# Zones: REGION-LETTER, the region a word, a hyphen and a word ending in digits (us-west4-a,
# europe-west4-b, northamerica-northeast1-c).
ZONE_RULE = re.compile(r'[a-z]+-[a-z]+[0-9]+-[a-z]')
# Project IDs: 6 to 30 lowercase letters, digits or hyphens, a letter first, no trailing hyphen;
# older projects may be domain-scoped ('example.com:my-project').
PROJECT_RULE = re.compile(r'(?:[a-z0-9][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]')
# TPU software versions: 'v2-alpha-tpuv5-lite', 'tpu-ubuntu2204-base', ...
RUNTIME_RULE = re.compile(r'[a-z0-9][-a-z0-9._]*')


class Runner:
  """Runs (or, dry, prints) commands in order; the one place a command is run."""

  def __init__(self, dry_run: bool):
    self.dry_run = dry_run
    self.commands: list[list[str]] = []

  def _show(self, argv: list[str]):
    self.commands.append(argv)
    print(('' if self.dry_run else '+ ') + shlex.join(argv), flush=True)

  def __call__(self, argv: list[str], *, check: bool = True) -> int:
    return self.together([argv], check=check)

  def together(self, argvs: list[list[str]], *, check: bool = True) -> int:
    """Starts every command at once (one per slice) and waits for all; the worst exit code."""
    for argv in argvs:
      self._show(argv)
    if self.dry_run:
      return 0
    procs = [subprocess.Popen(argv) for argv in argvs]
    codes = [p.wait() for p in procs]
    for argv, code in zip(argvs, codes):
      if check and code:
        sys.exit(f'Command failed ({code}): {shlex.join(argv)}')
    return max(codes)

  def output(self, argv: list[str], dry_value: str) -> str:
    """A command's standard output (`dry_value` in a dry run, which runs nothing)."""
    self._show(argv)
    if self.dry_run:
      return dry_value
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode or not result.stdout.strip():
      sys.exit(f'Command failed ({result.returncode}): {shlex.join(argv)}\n{result.stderr}')
    return result.stdout.strip()


def gcloud_argv(args, *words, **flags) -> list[str]:
  """`gcloud compute tpus WORDS --zone --project --FLAGS`: every gcloud command is built here."""
  argv = ['gcloud', 'compute', 'tpus', *words, f'--zone={args.zone}']
  if args.project:
    argv.append(f'--project={args.project}')
  for key, value in flags.items():
    flag = '--' + key.replace('_', '-')
    if value is True:
      argv.append(flag)
    elif value not in (None, False):
      argv.append(f'{flag}={value}')
  return argv


def gcloud(run: Runner, args, *words, check: bool = True, **flags) -> int:
  return run(gcloud_argv(args, *words, **flags), check=check)


def nodes(args) -> list[str]:
  """The TPU VM (node) names: NAME, or NAME-0 ... NAME-(N-1) for N slices (the names a queued
  resource with --node-prefix=NAME --node-count=N gives its nodes)."""
  if args.num_slices == 1:
    return [args.name]
  return [f'{args.name}-{i}' for i in range(args.num_slices)]


def check_names(parser, args):
  """Google Cloud's naming rules, before any command is built: a value that breaks them is refused
  (it would fail in gcloud anyway, or worse, mean something to a shell)."""
  longest = nodes(args)[-1]
  if not NAME_RULE.fullmatch(longest):
    extra = f' (its nodes are named {longest})' if args.num_slices > 1 else ''
    parser.error(f'--name={args.name!r}{extra}: TPU names are a lowercase letter followed by at most '
                 '62 lowercase letters, digits or hyphens, not ending in a hyphen (e.g. tubevit-b).')
  if not ZONE_RULE.fullmatch(args.zone):
    parser.error(f'--zone={args.zone!r} is not a Google Cloud zone name (e.g. us-west4-a, '
                 'europe-west4-b).')
  if args.project is not None and not PROJECT_RULE.fullmatch(args.project):
    parser.error(f'--project={args.project!r} is not a Google Cloud project ID: 6 to 30 lowercase '
                 'letters, digits or hyphens, starting with a letter (e.g. my-project).')
  if not RUNTIME_RULE.fullmatch(args.runtime_version):
    parser.error(f'--runtime_version={args.runtime_version!r} is not a TPU software version name '
                 '(e.g. v2-alpha-tpuv5-lite).')


def check_slices_override(parser, args, overrides):
  given = [a.split('=', 1)[1] for a in overrides if a.startswith('--config.mesh.slices=')]
  if any(g != str(args.num_slices) for g in given):
    parser.error(f'--config.mesh.slices={given[-1]} but --num_slices={args.num_slices}: drop the '
                 'override, the launcher sets config.mesh.slices from --num_slices.')


def parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('subcommand', choices=SUBCOMMANDS)
  parser.add_argument('--name', required=True, help='The TPU VM (and queued resource) name.')
  parser.add_argument('--zone', required=True, help='e.g. us-west4-a (v5e), us-east5-b (v6e).')
  parser.add_argument('--project', default=None, help='Default: gcloud config get project.')
  parser.add_argument('--accelerator_type', default='v5litepod-16',
                      help='Of each slice: v5litepod-16, v6e-16, v4-32, v5p-64, ... (v4/v5p count '
                           'cores).')
  parser.add_argument('--num_slices', type=int, default=1,
                      help='Slices joined over the data-centre network (multislice, through a queued '
                           'resource); the data axis spans them (docs/multislice.md).')
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
                      help='Create through a queued resource (waits until capacity is free); '
                           'always so with --num_slices > 1.')
  parser.add_argument('--dry_run', action='store_true', help='Print the commands, run none.')
  args, rest = parser.parse_known_args(argv)
  overrides = [a for a in rest if a.startswith('--config.')]
  unknown = [a for a in rest if not a.startswith('--config.')]
  if unknown:
    parser.error(f'unknown arguments {unknown}; config fields are given as --config.field=value.')
  args.topology = chips.from_accelerator_type(args.accelerator_type)
  args.runtime_version = args.runtime_version or args.topology.generation.runtime_version
  if args.num_slices < 1:
    parser.error(f'--num_slices={args.num_slices} must be >= 1.')
  if args.num_slices > 1:
    args.queued = True  # Cloud TPU makes several slices that reach each other only this way.
    if args.command == 'evaluate':
      parser.error('--num_slices applies to train; the evaluator runs on one (small) slice.')
  check_names(parser, args)
  check_slices_override(parser, args, overrides)
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
  num_slices = getattr(args, 'num_slices', 1)
  if num_slices > 1 and not any(a.startswith('--config.mesh.slices=') for a in overrides):
    argv.append(f'--config.mesh.slices={num_slices}')  # the mesh's slice axis (sharding.py)
  return argv + list(overrides)


def megascale_env(coordinator: str, num_slices: int, slice_id: int) -> dict[str, str]:
  """What JAX's TPU runtime reads to join slices (jax/_src/clusters/cloud_tpu_cluster.py): the
  coordinator (worker 0 of slice 0, also JAX's own coordinator), the slice count, this slice."""
  return {'MEGASCALE_COORDINATOR_ADDRESS': f'{coordinator}:{MEGASCALE_PORT}',
          'MEGASCALE_NUM_SLICES': str(num_slices), 'MEGASCALE_SLICE_ID': str(slice_id),
          'MEGASCALE_PORT': str(MEGASCALE_PORT)}


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
  if args.num_slices > 1:
    return gcloud(run, args, 'queued-resources', 'create', args.name, node_count=args.num_slices,
                  node_prefix=args.name, accelerator_type=args.accelerator_type,
                  runtime_version=args.runtime_version, **capacity)
  if args.queued:
    return gcloud(run, args, 'queued-resources', 'create', args.name, node_id=args.name,
                  accelerator_type=args.accelerator_type, runtime_version=args.runtime_version,
                  **capacity)
  return gcloud(run, args, 'tpu-vm', 'create', args.name, accelerator_type=args.accelerator_type,
                version=args.runtime_version, **capacity)


def wait_ready(run, args):
  """A queued resource becomes TPU VMs when capacity frees up (all slices at once): wait for ACTIVE."""
  if args.queued:
    describe = gcloud_argv(args, 'queued-resources', 'describe', args.name,
                           format='value(state.state)')
    run(['bash', '-c', f'until {shlex.join(describe)} | grep -q ACTIVE; do sleep 60; done'])


def ssh_argv(args, node: str, command: str, worker: str = 'all') -> list[str]:
  return gcloud_argv(args, 'tpu-vm', 'ssh', node, worker=worker, command=command)


def log_file(args, suffix: str) -> str:
  return f'{LOG_DIR}/{shlex.quote(args.name + suffix)}'


def start_command(args, overrides, env: dict[str, str]) -> str:
  """The shell command that starts the job on a worker, in the background, and keeps its pid."""
  exports = f'export {" ".join(shlex.quote(f"{k}={v}") for k, v in env.items())} && ' if env else ''
  # ( ... & echo $! ): $! is then the job's own pid (setsid execs in place, in its own session, so
  # the job outlives the ssh session); `stop` signals it.
  return (f'mkdir -p {LOG_DIR} && cd {REMOTE_DIR} && {exports}(setsid nohup '
          f'{shlex.join(job_argv(args, overrides))} >> {log_file(args, ".log")} 2>&1 < /dev/null & '
          f'echo $! > {log_file(args, ".pid")})')


def run_job(run, args, overrides):
  sha = commit()
  archive = f'/tmp/sparse_tubes-{sha[:12]}.tar.gz'
  run(['git', '-C', REPO, 'archive', '--format=tar.gz', f'--output={archive}', sha])
  names = nodes(args)
  run.together([gcloud_argv(args, 'tpu-vm', 'scp', archive, f'{node}:/tmp/', worker='all')
                for node in names])
  remote_archive = shlex.quote(f'/tmp/{os.path.basename(archive)}')
  install = (f'rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar xzf {remote_archive} -C '
             f'{REMOTE_DIR} && cd {REMOTE_DIR} && python3 -m pip install -q -U pip && '
             f"python3 -m pip install -q -e '.[tpu]'")
  run.together([ssh_argv(args, node, install) for node in names])
  envs = [{}]
  if args.num_slices > 1:
    # Worker 0 of slice 0 coordinates; its internal IP is known once the slices exist.
    ip = run.output(gcloud_argv(args, 'tpu-vm', 'describe', names[0],
                                format='value(networkEndpoints[0].ipAddress)'),
                    dry_value=f'IP-OF-{names[0]}-WORKER-0')
    envs = [megascale_env(ip, args.num_slices, i) for i in range(args.num_slices)]
  # Every worker of every slice at once: JAX's start-up waits for all of them.
  run.together([ssh_argv(args, node, start_command(args, overrides, env))
                for node, env in zip(names, envs)])
  print(f'Started {args.command} of commit {sha[:12]} on every worker of {", ".join(names)}; '
        f'python launch/tpu.py logs --name={args.name} --zone={args.zone}'
        + (f' --num_slices={args.num_slices}' if args.num_slices > 1 else '')
        + ' follows worker 0.', flush=True)


def main(argv=None) -> int:
  args, overrides = parse(sys.argv[1:] if argv is None else argv)
  run = Runner(args.dry_run)
  sub, names = args.subcommand, nodes(args)
  if sub in ('create', 'up'):
    create(run, args)
    wait_ready(run, args)
  if sub in ('run', 'up'):
    run_job(run, args, overrides)
  elif sub == 'status':
    if args.queued:
      gcloud(run, args, 'queued-resources', 'describe', args.name)
    for node in names:
      gcloud(run, args, 'tpu-vm', 'describe', node)
    run(ssh_argv(args, names[0], f'tail -n 2 {log_file(args, ".log")}'), check=False)
  elif sub == 'logs':
    run(ssh_argv(args, names[0], f'tail -n +1 -F {log_file(args, ".log")}', worker='0'))
  elif sub == 'stop':
    # SIGTERM, as a maintenance event sends: the job checkpoints and exits; `run` resumes it.
    run.together([ssh_argv(args, node, f'kill -TERM "$(cat {log_file(args, ".pid")})"')
                  for node in names], check=False)
  elif sub == 'delete':
    if args.queued:  # --force deletes its TPU VMs too
      gcloud(run, args, 'queued-resources', 'delete', args.name, force=True, quiet=True)
    else:
      gcloud(run, args, 'tpu-vm', 'delete', args.name, quiet=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
