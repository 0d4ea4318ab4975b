"""Model-zoo teachers: mmsegmentation and torchvision checkpoints as frozen logits models, in plain torch.

`load_mmseg(checkpoint, output_stride)` and `load_torchvision(arch, checkpoint, num_classes)` read files with
`torch.load(weights_only=True)` only, raise `UserError` (key `teacher.checkpoint`) naming the file for
anything that is not a valid checkpoint, and return a `ZooSegmenter`: eval mode, no grad, `num_classes`,
forward from harness-normalised images to N x C x H x W logits at the input size. `ZooTeacher` wraps one as
the trainer's teacher (`teacher(images).logits` at the network's own stride).
"""

from fakd.models.zoo.frozen import ZooOutput, ZooSegmenter, ZooTeacher
from fakd.models.zoo.mmseg import MMSEG_MEAN, MMSEG_STD, MMSegArchitecture, load_mmseg
from fakd.models.zoo.normalization import InputRenormalization
from fakd.models.zoo.resnet_v1c import ResNetV1c, StageLayout
from fakd.models.zoo.torchvision_zoo import TORCHVISION_ARCHS, TorchvisionArchitecture, load_torchvision

__all__ = [
    "MMSEG_MEAN",
    "MMSEG_STD",
    "TORCHVISION_ARCHS",
    "InputRenormalization",
    "MMSegArchitecture",
    "ResNetV1c",
    "StageLayout",
    "TorchvisionArchitecture",
    "ZooOutput",
    "ZooSegmenter",
    "ZooTeacher",
    "load_mmseg",
    "load_torchvision",
]
