"""A pod on this machine: N processes with K fake CPU devices each, wired with jax.distributed.

  python launch/local.py --processes=2 --devices_per_process=2 -- \
      train --config=configs/synthetic/tubevit_tiny.py --workdir=/tmp/pod
  python launch/local.py --processes=2 --devices_per_process=2 --slices=2 -- train ...

--slices=S emulates S TPU slices joined over the data-centre network: CPU devices have no
`slice_index`, so each process is one slice (sharding.make_mesh builds JAX's hybrid mesh by process),
and the command gets --config.mesh.slices=S: the data axis spans the processes, FSDP and tensor
groups stay inside one. Preemption and resume then run across slices as on a multislice job.

Everything after `--` is a `python -m sparse_tubes` command line, given to every process. Each
process gets the coordinator address, the process count and its index in the environment
(SPARSE_TUBES_COORDINATOR_ADDRESS, ..._NUM_PROCESSES, ..._PROCESS_ID, read by
sparse_tubes/distributed.py), exactly as a TPU VM worker finds them in its metadata. Process 0
prints; the others log warnings and errors with their index. SIGTERM and SIGINT are forwarded to
every process (a preemption of the whole slice). When one process fails the others are stopped (they
would wait for it forever in the next collective). The exit code is the worst of the processes'.
"""
import argparse
import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def child_env(process_id: int, processes: int, devices_per_process: int, port: int) -> dict:
  env = dict(os.environ)
  xla_flags = [f for f in env.get('XLA_FLAGS', '').split()
               if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(xla_flags + [
      f'--xla_force_host_platform_device_count={devices_per_process}'])
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO, env.get('PYTHONPATH')) if p)
  if processes > 1:
    env.update(SPARSE_TUBES_COORDINATOR_ADDRESS=f'localhost:{port}',
               SPARSE_TUBES_NUM_PROCESSES=str(processes), SPARSE_TUBES_PROCESS_ID=str(process_id))
  return env


def exit_code(returncode: int) -> int:
  """A process killed by signal S counts as 128 + S, as a shell reports it."""
  return 128 - returncode if returncode < 0 else returncode


def launch(command: list[str], *, processes: int, devices_per_process: int,
           port: int | None = None) -> int:
  port = port or free_port()
  procs = [subprocess.Popen([sys.executable, '-m', 'sparse_tubes', *command],
                            env=child_env(i, processes, devices_per_process, port))
           for i in range(processes)]

  def forward(signum, _frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    while any(p.poll() is None for p in procs):
      if any(p.returncode not in (None, 0) for p in procs):
        forward(signal.SIGTERM, None)  # One failed: the rest would hang in their next collective.
        deadline = time.time() + 30
        while any(p.poll() is None for p in procs) and time.time() < deadline:
          time.sleep(0.2)
        for p in procs:
          if p.poll() is None:
            p.kill()
        break
      time.sleep(0.2)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  return max(exit_code(p.wait()) for p in procs)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if '--' not in argv:
    print('Usage: python launch/local.py --processes=N --devices_per_process=K -- COMMAND ...\n'
          '  e.g. -- train --config=configs/synthetic/tubevit_tiny.py --workdir=/tmp/pod',
          file=sys.stderr)
    return 2
  split = argv.index('--')
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--processes', type=int, default=2, help='JAX processes (hosts) to start.')
  parser.add_argument('--devices_per_process', type=int, default=1,
                      help='Fake CPU devices per process (chips per host).')
  parser.add_argument('--slices', type=int, default=1,
                      help='Emulated slices: 1, or --processes (each process is one slice).')
  parser.add_argument('--port', type=int, default=None,
                      help='Coordinator port on localhost (default: a free one).')
  args = parser.parse_args(argv[:split])
  command = argv[split + 1:]
  if args.processes < 1 or args.devices_per_process < 1 or not command:
    parser.error('--processes and --devices_per_process must be >= 1, and a command must follow --.')
  if args.slices not in (1, args.processes):
    parser.error(f'--slices={args.slices}: on CPU each process is one slice, so use --slices=1 or '
                 f'--slices={args.processes} (= --processes).')
  if args.slices > 1:
    if any(a.startswith('--config.mesh.slices=') for a in command):
      parser.error('--slices sets --config.mesh.slices; drop it from the command.')
    command = [*command, f'--config.mesh.slices={args.slices}']
  return launch(command, processes=args.processes, devices_per_process=args.devices_per_process,
                port=args.port)


if __name__ == '__main__':
  sys.exit(main())
