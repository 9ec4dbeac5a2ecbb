"""Multi-host start-up: `jax.distributed.initialize` when (and only when) the run has several processes.

Where the process layout comes from, in order:
  1. explicit: --coordinator_address, --num_processes, --process_id (or the environment variables
     SPARSE_TUBES_COORDINATOR_ADDRESS, SPARSE_TUBES_NUM_PROCESSES, SPARSE_TUBES_PROCESS_ID, which
     `launch/local.py` sets): several processes on one CPU machine, or any cluster jax cannot detect;
  2. detected by jax: a Cloud TPU pod slice (TPU VM metadata), GKE TPU pods (TPU_WORKER_HOSTNAMES),
     SLURM (SLURM_NTASKS...), Open MPI. It is only initialized when the detected process count is > 1.
A single-process run never calls `jax.distributed.initialize`.

After start-up only process 0 prints (progress lines, result tables); every process keeps logging
warnings and errors, prefixed with `[process i/n]`.
"""
import logging as std_logging
import os
import sys

import jax
from absl import logging

from sparse_tubes import compat

ENV = dict(coordinator_address='SPARSE_TUBES_COORDINATOR_ADDRESS',
           num_processes='SPARSE_TUBES_NUM_PROCESSES', process_id='SPARSE_TUBES_PROCESS_ID')


def explicit_layout(coordinator_address=None, num_processes=None, process_id=None):
  """(address, count, id) from the arguments, else the environment; None when neither sets it."""
  address = coordinator_address or os.environ.get(ENV['coordinator_address'])
  count = num_processes if num_processes is not None else os.environ.get(ENV['num_processes'])
  pid = process_id if process_id is not None else os.environ.get(ENV['process_id'])
  if address is None and count is None and pid is None:
    return None
  if address is None or count is None or pid is None:
    raise ValueError(
        f'Multi-process flags are incomplete (coordinator_address={address}, num_processes={count}, '
        f'process_id={pid}): give all three, e.g. --coordinator_address=10.0.0.2:8476 '
        f'--num_processes=2 --process_id=0 (or {", ".join(ENV.values())}).')
  count, pid = int(count), int(pid)
  if not 0 <= pid < count:
    raise ValueError(f'process_id={pid} must be in [0, num_processes={count}).')
  return address, count, pid


def detected_process_count() -> int:
  """Process count of the cluster jax detects (TPU pod, GKE, SLURM, Open MPI); 1 when none."""
  for env in compat.jax_cluster_types():  # jax's own detection, as initialize() uses it.
    try:
      if not env.opt_in_only_method and env.is_env_present():
        return int(env.get_process_count())
    except Exception as e:  # A half-configured environment: say so, and run single-process.
      logging.warning('Cluster detection (%s) failed: %s; running as one process.', env.__name__, e)
      return 1
  return 1


def initialize(coordinator_address=None, num_processes=None, process_id=None) -> bool:
  """Starts the multi-host runtime if this run has several processes. Returns whether it did.

  Must run before any other JAX call that touches a backend (devices, arrays, jit)."""
  layout = explicit_layout(coordinator_address, num_processes, process_id)
  if layout is not None:
    address, count, pid = layout
    if count == 1:
      return False
    # Cross-process collectives of the CPU backend (fake devices, tests, laptops); TPUs ignore it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(address, num_processes=count, process_id=pid)
  else:
    if detected_process_count() <= 1:
      return False
    jax.distributed.initialize()
  prefix_logs()
  return True


class _ProcessPrefix(std_logging.Filter):

  def filter(self, record):
    if not getattr(record, '_sparse_tubes_prefixed', False):
      record.msg = f'[process {jax.process_index()}/{jax.process_count()}] {record.msg}'
      record._sparse_tubes_prefixed = True
    return True


def prefix_logs():
  """Every log record (absl and Python logging) carries `[process i/n]`."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _ProcessPrefix) for f in handler.filters):
    handler.addFilter(_ProcessPrefix())


def quiet_followers():
  """Only process 0 prints: stdout of the other processes goes to /dev/null (their warnings and
  errors still reach stderr through logging)."""
  if jax.process_index() != 0:
    sys.stdout = open(os.devnull, 'w')


def _has_tpu() -> bool:
  """Whether this host has TPU chips (their device files: /dev/accel* on v2-v4 and v5p, /dev/vfio
  on v5e and v6e) or is told it is a TPU VM."""
  if os.environ.get('TPU_ACCELERATOR_TYPE') or os.environ.get('TPU_WORKER_HOSTNAMES'):
    return True
  try:
    dev = os.listdir('/dev')
    vfio = os.listdir('/dev/vfio') if 'vfio' in dev else []
  except OSError:
    return True  # Cannot tell: leave libtpu as it is.
  return any(n.startswith('accel') for n in dev) or any(n.isdigit() for n in vfio)


def quiet_libtpu():
  """With the [tpu] extra installed (README advises it for `plan`), libtpu loads in every command
  and, on a host without TPU chips, warns that it cannot determine the accelerator type and the
  worker hostnames (it asks the GCE metadata server). Those warnings say nothing to the user of a
  CPU or GPU host: there, libtpu is told to skip the query and to log errors only. Call it before
  JAX starts its backends; a TPU VM is left as it is."""
  if _has_tpu():
    return
  for key, value in (('TPU_SKIP_MDS_QUERY', '1'), ('TPU_STDERR_LOG_LEVEL', '2'),
                     ('TPU_MIN_LOG_LEVEL', '2')):
    os.environ.setdefault(key, value)


# Orbax warnings that describe its own bookkeeping, not the user's run: a step directory without
# the metadata file Orbax writes last (an older or damaged checkpoint: `evaluate` and `train` say
# which in their own words), and the tracebacks of a failed background save (the command reports
# the failure in one line, with the directory and the error).
_ORBAX_NOISE = ('Metadata file does not exist', 'raised an exception', 'Failed to run',
                'Failed to write metadata', 'Save Finalize thread', 'Event loop is closed',
                'failed to finalize', 'Failed to finalize')


class _QuietOrbax(std_logging.Filter):

  def filter(self, record):
    if '/orbax/' not in record.pathname.replace(os.sep, '/'):
      return True
    return not any(n in str(record.msg) for n in _ORBAX_NOISE)


def quiet_library_logs():
  """Drops the Orbax log records in _ORBAX_NOISE (the commands say what they mean in one line);
  --verbosity=0 or more shows everything again."""
  logger = std_logging.getLogger('absl')  # Orbax logs through absl.logging, i.e. this logger.
  if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
    logger.addFilter(_QuietOrbax())
