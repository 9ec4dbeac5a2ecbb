"""Starting from pretrained weights: image-ViT checkpoints (vit.py), inflation into the video models
(inflate.py), `config.init_from` (init.py), and the published video checkpoints (modules beside)."""
import importlib


def optional(module: str, what: str):
  """Imports `module`, a dependency of the [torch] extra only, with an error that says how to get it.

  The base install (training, evaluation, predict, info) has no torch, transformers or safetensors;
  only reading or writing PyTorch / HuggingFace checkpoints needs them."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ImportError(f"{what} needs {module.split('.')[0]}, which the base install leaves out: "
                      "pip install 'sparse_tubes[torch]'") from None
