"""The chip table: Cloud TPU generations (names, chips, memory, peak speed; `plan`, launch/tpu.py)
and the peak and memory of every accelerator JAX reports (`device_kind`: MFU in `bench`).

A topology is written '<generation>:<chip grid>', e.g. 'v5e:4x4' (16 chips, the slice Cloud TPU
sells as accelerator type 'v5litepod-16'). v4 and v5p accelerator types count TensorCores (two per
chip): 'v4-32' is 16 chips, 'v4:2x2x4'.
"""
import dataclasses
import math
import re


@dataclasses.dataclass(frozen=True)
class Generation:
  name: str
  hbm_gib: float            # HBM per chip
  bf16_tflops: float        # peak dense bf16 per chip
  accelerator_prefix: str   # gcloud --accelerator-type is f'{prefix}{n}'
  cores_per_chip: int       # what the n of the accelerator type counts per chip
  dims: int                 # 2D torus (v5e, v6e) or 3D (v4, v5p)
  chip_config: str          # libtpu's chip configuration for ahead-of-time compilation
  runtime_version: str      # the TPU VM image for JAX (Cloud TPU docs, "TPU software versions")


# Cloud TPU docs, "System architecture" per generation: HBM per chip and peak bf16 TFLOPs per chip.
GENERATIONS = {
    'v4': Generation('v4', 32, 275, 'v4-', 2, 3, 'megacore', 'tpu-ubuntu2204-base'),
    'v5e': Generation('v5e', 16, 197, 'v5litepod-', 1, 2, 'default', 'v2-alpha-tpuv5-lite'),
    'v5p': Generation('v5p', 95, 459, 'v5p-', 2, 3, 'megacore', 'v2-alpha-tpuv5'),
    'v6e': Generation('v6e', 32, 918, 'v6e-', 1, 2, 'default', 'v2-alpha-tpuv6e'),
}
EXAMPLES = 'v5e:4x4, v6e:4x4, v4:2x2x4, v5p:2x4x4'


@dataclasses.dataclass(frozen=True)
class Topology:
  generation: Generation
  shape: tuple[int, ...]

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def name(self) -> str:
    return f"{self.generation.name}:{'x'.join(map(str, self.shape))}"

  @property
  def accelerator_type(self) -> str:
    g = self.generation
    return f'{g.accelerator_prefix}{self.chips * g.cores_per_chip}'

  @property
  def hosts(self) -> int:
    """TPU VM workers: 4 chips each, except single-host slices of up to 8 (v5e, v6e)."""
    if self.generation.dims == 2 and self.chips <= 8:
      return 1
    return max(1, self.chips // 4)


def parse(topology: str) -> Topology:
  m = re.fullmatch(r'(v\d+[a-z]*):(\d+(?:x\d+)*)', topology or '')
  if not m or m.group(1) not in GENERATIONS:
    raise ValueError(f'Unknown TPU topology {topology!r}: write GENERATION:GRID with a generation of '
                     f'{tuple(GENERATIONS)}, e.g. {EXAMPLES}.')
  g = GENERATIONS[m.group(1)]
  shape = tuple(int(s) for s in m.group(2).split('x'))
  if len(shape) != g.dims or any(s < 1 for s in shape):
    raise ValueError(f'TPU topology {topology!r}: {g.name} chips form a {g.dims}D grid, e.g. '
                     f"{g.name}:{'x'.join(['2'] * g.dims)}.")
  return Topology(g, shape)


def default_shape(chips: int, dims: int) -> tuple[int, ...]:
  """The grid Cloud TPU gives a slice of `chips` by default: 16 -> 4x4, 32 -> 4x8 (2D); 16 ->
  2x2x4, 8 -> 2x2x2, 4 -> 2x2x1 (3D)."""
  if chips < 1 or chips & (chips - 1):
    raise ValueError(f'{chips} chips: slices have a power-of-two number of chips.')
  shape = [1] * dims
  while math.prod(shape) < chips:
    shape[shape.index(min(shape))] *= 2
  shape.sort()
  if dims == 3 and shape[0] == 1:
    shape = shape[1:] + [1]
  return tuple(shape)


def from_accelerator_type(accelerator_type: str) -> Topology:
  """'v5litepod-16' -> v5e:4x4; 'v4-32' -> v4:2x2x4."""
  for g in GENERATIONS.values():
    prefix = g.accelerator_prefix
    if accelerator_type.startswith(prefix) and accelerator_type[len(prefix):].isdigit():
      n = int(accelerator_type[len(prefix):])
      if n % g.cores_per_chip == 0:
        return Topology(g, default_shape(n // g.cores_per_chip, g.dims))
  raise ValueError(f'Unknown --accelerator_type={accelerator_type!r}: use e.g. v5litepod-16, v6e-16, '
                   f'v4-32 or v5p-64.')


# Dense bf16 peak TFLOP/s and HBM GiB per device as JAX reports it, by a substring of its
# `device_kind`, first match first ('v5 lite' before 'v5'). TPUs from the table above (for v4 and
# v5p one JAX device is one chip, its two TensorCores together); NVIDIA's datasheets for GPUs
# (SXM parts, dense, without sparsity).
TPU_KINDS = (('TPU v6 lite', 'v6e'), ('TPU v5 lite', 'v5e'), ('TPU v5p', 'v5p'), ('TPU v5', 'v5p'),
             ('TPU v4', 'v4'))
GPUS = (('B200', 2250, 180), ('H200', 989, 141), ('H100', 989, 80), ('A100', 312, 80),
        ('L4', 121, 24))


def _device(device_kind: str) -> tuple[float, float] | None:
  kind = device_kind.lower()
  for key, gen in TPU_KINDS:
    if key.lower() in kind:
      return GENERATIONS[gen].bf16_tflops, GENERATIONS[gen].hbm_gib
  for key, tflops, hbm in GPUS:
    if key.lower() in kind:
      return tflops, hbm
  return None


def peak_flops(device_kind: str) -> float | None:
  """Peak dense bf16 FLOP/s of one device, None where unknown (CPUs)."""
  d = _device(device_kind)
  return None if d is None else d[0] * 1e12


def hbm_gib(device_kind: str) -> float | None:
  d = _device(device_kind)
  return None if d is None else float(d[1])
