"""Package metadata: the one source of truth (pyproject.toml only names the build system).

  pip install .                  the demo, training, evaluation, predict, info, prepare (no torch)
  pip install '.[torch]'         + PyTorch / HuggingFace checkpoint import and export (convert)
  pip install '.[tpu]'           + jax for TPU (libtpu)       pip install '.[cuda]'  + jax for NVIDIA GPUs
  pip install '.[notebooks]'     + jupyter and matplotlib for notebooks/
  pip install '.[beam]'          + Apache Beam: `prepare --beam_runner=...` (docs/prepare_on_beam.md)
  pip install '.[onnx]'          + onnxruntime and ONNX for `convert --to=onnx`, then
                                 pip install --no-deps jax2onnx==0.17.1 (see ONNX below)
  pip install '.[test]'          everything the test suite needs
"""
import pathlib

import setuptools

BASE = [
    'jax>=0.7',
    'flax>=0.12',
    'optax>=0.2.5',
    'orbax-checkpoint>=0.11',
    'tensorflow-datasets>=4.9.9',   # used without TensorFlow (see README, "No TensorFlow anywhere")
    'array-record>=0.8',
    'grain>=0.2.12',
    'ml-collections>=1.0',
    'clu>=0.0.12',
    'tensorboardX>=2.6',
    'absl-py',
    'etils[epath]',
    'numpy',
    'pillow',
    'opencv-python-headless',
    'av',
]
TORCH = ['torch>=2.1', 'transformers>=4.40', 'safetensors']
BEAM = ['apache-beam>=2.60']
# `convert --to=onnx` (sparse_tubes/export_onnx.py): jax2onnx traces the model, onnxruntime runs
# it. jax2onnx itself is not listed: every release's metadata pins orbax-checkpoint<0.11.37, an
# older Orbax than this package's, though its code never imports Orbax. So it is installed with
# --no-deps (the Makefile does); these are the packages its code does import.
ONNX = ['onnx>=1.20.1', 'onnx-ir>=0.2.1', 'onnxruntime>=1.24.1', 'einops>=0.8.1']
NOTEBOOK_RUN = ['matplotlib', 'nbclient', 'nbformat', 'ipykernel']   # what executes a notebook
EXTRAS = {
    'torch': TORCH,
    'tpu': ['jax[tpu]'],
    'cuda': ['jax[cuda12]'],
    'notebooks': ['jupyter'] + NOTEBOOK_RUN,
    # Dataflow also needs apache-beam[gcp] and gcsfs (docs/prepare_on_beam.md); not here, as they
    # pull in some 70 Google Cloud packages a DirectRunner or Spark run does not use.
    'beam': BEAM,
    'onnx': ONNX,
    # torch pinned to the CPU wheel the CI machine holds locally; newer releases work as well.
    # jax[tpu] (libtpu): `plan` compiles paper configs for TPU slices in the suite; pyyaml reads
    # launch/gke.py's manifests. Beam: test_beam runs `prepare` on the DirectRunner.
    'test': ['pytest>=8', 'pytest-xdist', 'torch==2.13.0', 'jax[tpu]', 'pyyaml'] + TORCH
            + NOTEBOOK_RUN + BEAM + ONNX,
}

setuptools.setup(
    name='sparse_tubes',
    version='0.1.0',
    description='TubeViT, ViViT and TimeSformer video transformers in JAX/Flax NNX',
    long_description=pathlib.Path(__file__).with_name('README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=setuptools.find_packages(include=['sparse_tubes', 'sparse_tubes.*']),
    install_requires=BASE,
    extras_require=EXTRAS,
    entry_points={'console_scripts': ['sparse_tubes = sparse_tubes.main:run']},
)
