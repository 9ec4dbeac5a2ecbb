"""Starting from pretrained weights: image-ViT checkpoints (vit.py), inflation into the video models
(inflate.py), `config.init_from` (init.py), and the published video checkpoints (modules beside)."""
