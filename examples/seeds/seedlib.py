"""What the seed-workflow networks share: their conv-bn-relu unit, the seeded weights
that stand in for a checkpoint, and the TorchScript ONNX export every flow starts from."""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True):
    """Conv (no bias, same padding) + BatchNorm (+ ReLU)."""
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


def seeded(net: nn.Module, seed: int = 0) -> nn.Module:
    """Fixed random weights, BatchNorm with non-trivial running statistics, eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(1.0 + 0.2 * torch.randn(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return net.eval()


def export_onnx(
    net: nn.Module,
    example: torch.Tensor,
    path: str,
    output_names: list[str],
    opset: int,
    dynamic_axes: dict | None = None,
) -> None:
    """torch.onnx.export (TorchScript exporter, as mmdeploy / AlphaPose use it) of `net`
    on `example`, input named `input`, constants folded."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    with open(path, "wb") as f:
        f.write(buf.getvalue())
