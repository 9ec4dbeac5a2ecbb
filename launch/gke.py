"""The same job on GKE: a JobSet manifest for a TPU slice node pool (what xpk submits).

  python launch/gke.py --name=tubevit-b --accelerator_type=v5litepod-16 \
      --image=us-docker.pkg.dev/my-project/sparse-tubes/train:latest \
      --config=configs/kinetics400/tubevit_b.py --workdir=gs://my-bucket/runs/tubevit_b \
      --data_dir=gs://my-bucket/tfds --dry_run            # prints the manifest
  python launch/gke.py ... | kubectl apply -f -           # without --dry_run: kubectl apply

One replicated job per slice (replicas = --num_slices), one pod per TPU VM host of the slice
(parallelism = completions = hosts), each asking for the host's chips (google.com/tpu) on a node pool
of that accelerator and topology; the exclusive-topology annotation puts each slice's job on a node
pool of its own. JAX finds its peers in a slice from the pod environment GKE sets
(TPU_WORKER_HOSTNAMES), so `python -m sparse_tubes train` starts the multi-host runtime itself
(sparse_tubes/distributed.py). With several slices every pod also gets the MegaScale environment:
MEGASCALE_COORDINATOR_ADDRESS (pod 0 of slice 0, by its JobSet DNS name), MEGASCALE_NUM_SLICES,
MEGASCALE_SLICE_ID (the pod's job index, from the downward API) and MEGASCALE_PORT, and the job gets
--config.mesh.slices (docs/multislice.md). The whole JobSet restarts after a preemption or failure
(failurePolicy.maxRestarts) and resumes from the workdir.
"""
import argparse
import shlex
import subprocess
import sys

import tpu as tpu_launch  # launch/tpu.py: the command line the workers run, naming rules, MegaScale.

from sparse_tubes import chips

# GKE node labels of the TPU generations (cloud.google.com/gke-tpu-accelerator).
GKE_ACCELERATOR = {'v4': 'tpu-v4-podslice', 'v5e': 'tpu-v5-lite-podslice', 'v5p': 'tpu-v5p-slice',
                   'v6e': 'tpu-v6e-slice'}
REPLICATED_JOB = 'slice'


def slice_env(args) -> list[dict]:
  """The MegaScale variables of a pod of a multislice JobSet."""
  # JobSet names pod j of job i of replicated job R `NAME-R-i-j`, resolvable as `NAME-R-i-j.NAME`
  # (network.enableDNSHostnames below).
  coordinator = f'{args.name}-{REPLICATED_JOB}-0-0.{args.name}'
  env = tpu_launch.megascale_env(coordinator, args.num_slices, 0)
  out = [{'name': k, 'value': v} for k, v in env.items() if k != 'MEGASCALE_SLICE_ID']
  return out + [{'name': 'MEGASCALE_SLICE_ID', 'valueFrom': {'fieldRef': {
      'fieldPath': "metadata.labels['jobset.sigs.k8s.io/job-index']"}}}]


def manifest(args, overrides) -> dict:
  topo = chips.from_accelerator_type(args.accelerator_type)
  hosts = topo.hosts
  job = ' '.join(shlex.quote(a) for a in tpu_launch.job_argv(args, overrides))
  pod = {
      'restartPolicy': 'Never',
      'hostNetwork': True,
      'dnsPolicy': 'ClusterFirstWithHostNet',
      'nodeSelector': {
          'cloud.google.com/gke-tpu-accelerator': GKE_ACCELERATOR[topo.generation.name],
          'cloud.google.com/gke-tpu-topology': 'x'.join(map(str, topo.shape)),
      },
      'containers': [{
          'name': 'sparse-tubes',
          'image': args.image,
          'command': ['bash', '-c', job],
          'ports': [{'containerPort': 8471}, {'containerPort': 8080}],
          'securityContext': {'privileged': True},
          'resources': {'limits': {'google.com/tpu': topo.chips // hosts}},
      }],
  }
  if args.num_slices > 1:
    pod['containers'][0]['env'] = slice_env(args)
  return {
      'apiVersion': 'jobset.x-k8s.io/v1alpha2',
      'kind': 'JobSet',
      'metadata': {'name': args.name, 'annotations': {
          'alpha.jobset.sigs.k8s.io/exclusive-topology': 'cloud.google.com/gke-nodepool'}},
      'spec': {
          'failurePolicy': {'maxRestarts': args.max_restarts},
          'network': {'enableDNSHostnames': True},
          'replicatedJobs': [{
              'name': REPLICATED_JOB,
              'replicas': args.num_slices,
              'template': {'spec': {
                  'parallelism': hosts, 'completions': hosts, 'backoffLimit': 0,
                  'template': {'spec': pod}}},
          }],
      },
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--name', required=True, help='The JobSet name.')
  parser.add_argument('--accelerator_type', default='v5litepod-16')
  parser.add_argument('--image', required=True,
                      help="A container with this checkout installed (pip install '.[tpu]').")
  parser.add_argument('--config', default=None)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--command', default='train', choices=('train', 'evaluate'))
  parser.add_argument('--num_slices', type=int, default=1,
                      help='Slices joined over the data-centre network; the data axis spans them.')
  parser.add_argument('--max_restarts', type=int, default=10,
                      help='Restarts after preemptions or failures; each resumes from the workdir.')
  parser.add_argument('--dry_run', action='store_true', help='Print the manifest, apply nothing.')
  args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in rest if a.startswith('--config.')]
  if len(overrides) != len(rest):
    parser.error(f'unknown arguments {[a for a in rest if a not in overrides]}.')
  if args.command == 'train' and not args.config:
    parser.error('--config is required to train, e.g. --config=configs/kinetics400/tubevit_b.py')
  if args.num_slices < 1:
    parser.error(f'--num_slices={args.num_slices} must be >= 1.')
  if args.num_slices > 1 and args.command == 'evaluate':
    parser.error('--num_slices applies to train; the evaluator runs on one (small) slice.')
  tpu_launch.check_slices_override(parser, args, overrides)
  # Pod hostnames NAME-slice-I-J must be DNS labels (at most 63 characters).
  hosts = chips.from_accelerator_type(args.accelerator_type).hosts
  longest = f'{args.name}-{REPLICATED_JOB}-{args.num_slices - 1}-{hosts - 1}'
  if not tpu_launch.NAME_RULE.fullmatch(longest):
    parser.error(f'--name={args.name!r}: JobSet names are a lowercase letter followed by lowercase '
                 f'letters, digits or hyphens, short enough for the pod names ({longest}) to stay '
                 'within 63 characters.')
  import yaml
  text = yaml.safe_dump(manifest(args, overrides), sort_keys=False)
  if args.dry_run:
    print(text, end='')
    return 0
  return subprocess.run(['kubectl', 'apply', '-f', '-'], input=text, text=True).returncode


if __name__ == '__main__':
  sys.exit(main())
