"""The commands of `python -m sparse_tubes COMMAND`, one module each, every one with a
`main(flags, args)` that main.py dispatches to. Commands use the libraries of the package and
never each other; no library imports a command (tests/test_imports.py checks both)."""
from absl import app


def need(value, flag: str, example: str):
  """`value`, or a usage error naming the missing --flag with an example."""
  if not value:
    raise app.UsageError(f'--{flag} is required here, e.g. --{flag}={example}')
  return value


def config_and_workdir(flags):
  """(config, workdir) of a command that reads or writes a workdir: --config if given, else the
  config.json `train` or `convert` wrote there."""
  from sparse_tubes import workdir as workdir_lib
  workdir = need(flags.workdir, 'workdir', '/tmp/run')
  try:
    return workdir_lib.resolve_config(flags.config, workdir), workdir
  except FileNotFoundError as e:
    raise app.UsageError(str(e)) from None


def start_distributed(flags):
  """Before any other JAX call: a pod's processes find each other here (train, evaluate)."""
  from sparse_tubes import distributed
  distributed.initialize(flags.coordinator_address, flags.num_processes, flags.process_id)
  distributed.quiet_followers()
