"""The model registries. Modules register into them when imported."""
from edgehaze.registry import Registry

BACKBONES = Registry("backbone")
DEPTH_MODELS = Registry("depth model")
