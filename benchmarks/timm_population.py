"""The timm population of the coverage benchmark: one model per architecture family.

A family is a timm model name's first word, its trailing size digits dropped (``resnet18`` and
``resnet50`` are ``resnet``; ``resnetv2_18`` is ``resnetv2``), weight-source prefixes (``tf_``,
``gluon_``, ``legacy_``) ignored; each family is represented by its smallest variant by
parameter count at ``num_classes=10``. The list was computed once from timm 1.0.31's
``timm.list_models()`` (1,371 names, 167 families; counting parameters of all of them takes
8 minutes), keeping the 141 families whose smallest variant has at most 31 M parameters (the
few larger ones are foundation-model encoders and NASNet-style giants, minutes each on a CPU),
less the ``test_*`` models and SAM's detection backbone, plus ``inception_v3`` and
``inception_v4``, which timm files apart from ``inception_next``. :func:`build` gives each model
the smallest input it takes: 64 pixels a side where it runs on that, else its configured size.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TIMM_MODELS", "build"]

TIMM_MODELS: tuple[str, ...] = (
    "lcnet_035", "mobilenetv2_035", "starnet_s050", "mobilenetv3_small_050",
    "mobilenetv4_conv_small_035", "mnasnet_small", "tinynet_e", "semnasnet_050", "dla46x_c",
    "mobilevit_xxs", "repghostnet_050", "mobilevitv2_050", "edgenext_xx_small", "ghostnet_050",
    "ese_vovnet19b_slim_dw", "convnext_zepto_rms", "ghostnetv3_050", "efficientvit_b0",
    "regnetx_002", "cspnext_tiny", "mixnet_s", "iformer_t", "fasternet_t0",
    "cs3darknet_focus_s", "regnety_002", "mobilenet_edgetpu_100", "lcnetv2_small",
    "xcit_nano_12_p8_224", "swiftformer_xs", "spnasnet_100", "inception_next_atto",
    "mobilenetv1_100", "efficientformerv2_s0", "fastvit_t8", "efficientnet_lite0",
    "convnextv2_atto", "pvt_v2_b0", "rexnet_100", "mobileone_s1", "fbnetc_100", "rexnetr_100",
    "hardcorenas_b", "hgnetv2_b0", "pit_ti_224", "repvit_m1", "ghostnetv2_100", "resnet10t",
    "cpubone_nano", "tiny_vit_5m_224", "coat_tiny", "vit_tiny_patch16_dinov3_qkvb",
    "eva02_tiny_patch14_224", "convit_tiny", "deit_tiny_patch16_224", "efficientvim_m1",
    "gmlp_ti16_224", "tf_efficientnetv2_b0", "shvit_s1", "regnetz_005", "mambaout_femto",
    "gernet_s", "fbnetv3_b", "crossvit_tiny_240", "densenet121", "densenetblur121d",
    "levit_128s", "maxvit_pico_rw_256", "halonet_h1", "nf_regnet_b0", "repvgg_a0",
    "resnext26ts", "eca_resnext26ts", "dpn48b", "seresnext26ts", "gcresnext26ts", "resnest14d",
    "bat_resnext26ts", "lambda_resnet26t", "visformer_tiny", "haloregnetz_b",
    "coatnet_pico_rw_224", "botnet26t_256", "csatv2", "hrnet_w18_small", "resnetv2_18",
    "resnetblur18", "legacy_seresnet18", "poolformerv2_s12", "efficientformer_l1",
    "poolformer_s12", "skresnet18", "gcvit_xxtiny", "cait_xxs24_224", "gmixer_12_224",
    "sehalonet33ts", "sebotnet33ts_256", "lowformer_b0", "gc_efficientnetv2_rw_t", "hgnet_tiny",
    "darknet17", "ecaresnext26t_32x4d", "ecaresnet26t", "coatnext_nano_rw_224", "resmlp_12_224",
    "maxxvit_rmlp_nano_rw_256", "nest_tiny", "mixer_s16_224", "cspresnext50", "gcresnet33ts",
    "regnetv_040", "sedarknet21", "convmixer_768_32", "lamhalobotnet50ts_256", "cspresnet50",
    "halo2botnet50ts_256", "legacy_xception", "resnetaa34d", "vovnet39a", "flexivit_small",
    "vitamin_small_224", "res2next50", "rdnet_tiny", "maxxvitv2_nano_rw_256",
    "res2net50_14w_8s", "tnt_s_legacy_patch16_224", "mvitv2_tiny", "twins_svt_small",
    "caformer_s18", "convformer_s18", "skresnext50_32x4d", "volo_d1_224", "seresnetaa50d",
    "cspdarknet53", "hiera_tiny_224", "sequencer2d_s", "swin_tiny_patch4_window7_224",
    "swinv2_cr_tiny_224", "davit_tiny", "focalnet_tiny_srf", "ecaresnetlight", "selecsls42",
    "tresnet_m", "nextvit_small", "inception_v3", "inception_v4",
)

SMALL_SIDE = 64


def build(name: str, batch: int, seed: int) -> tuple[nn.Module, torch.Tensor, dict]:
    """timm model ``name`` with random weights, ``num_classes=10``, in eval mode; a seeded input
    of the smallest size it takes (64 pixels a side, else its configured input size); the
    builder options."""
    options: dict = {"num_classes": 10}
    try:  # a ViT-style model takes its image size as an argument: 64 keeps it cheap
        model = _create(name, options | {"img_size": SMALL_SIDE}, seed)
        options["img_size"] = SMALL_SIDE
    except TypeError:
        model = _create(name, options, seed)
    x = torch.randn(batch, 3, SMALL_SIDE, SMALL_SIDE, generator=torch.Generator().manual_seed(seed))
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # noqa: BLE001 - a fixed or minimum input size: take the configured one
        options.pop("img_size", None)
        model = _create(name, options, seed)
        channels, height, width = model.pretrained_cfg["input_size"]
        x = torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(seed))
    return model, x, options


def _create(name: str, options: dict, seed: int) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(name, **options).eval()
    with torch.no_grad():
        for module in model.modules():
            # a zero-initialised head would make every logit zero to compare
            if isinstance(module, nn.Linear) and not module.weight.any():
                nn.init.normal_(module.weight, std=0.05)
    return model
