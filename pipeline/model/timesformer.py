"""TimeSformer (Bertasius et al., ICML 2021): ViT-B/16 with divided space-time attention, on timm layers.

Parameter names equal the official implementation's (without its ``model.`` prefix), so official
checkpoints load with no renaming. Tokens are ordered space-major, time-minor: ``b (n t) d`` with
n = h·w patches; the CLS token is token 0 and carries no time embedding.

Divided attention per block (the paper's "T+S"):
  temporal: ``b (n t) d -> (b n) t d``, attention over the t frames of one patch (CLS excluded),
            then ``temporal_fc``, residual add;
  spatial:  ``b (n t) d -> (b t) n d`` plus a per-frame copy of CLS, attention over the n patches;
            the t CLS outputs are averaged; residual add;
  MLP:      ``norm2 -> mlp``, residual add.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.layers import Attention, DropPath, Mlp, PatchEmbed, trunc_normal_
from torch import nn

ATTENTION_TYPES = ("divided_space_time", "joint_space_time", "space_only")


def resize_time_embed(time_embed: torch.Tensor, num_frames: int) -> torch.Tensor:
    """[1, T, D] → [1, num_frames, D] with 1-D nearest interpolation (the official rule)."""
    if time_embed.shape[1] == num_frames:
        return time_embed
    resized = F.interpolate(time_embed.transpose(1, 2), size=num_frames, mode="nearest")
    return resized.transpose(1, 2)


def resize_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """[1, 1 + P·P, D] → [1, 1 + grid_h·grid_w, D]: CLS entry kept, patch entries resized as a
    2-D grid with nearest interpolation (the official forward's rule)."""
    if pos_embed.shape[1] == 1 + grid_h * grid_w:
        return pos_embed
    cls_pos, grid = pos_embed[:, :1], pos_embed[:, 1:]
    side = int(round(grid.shape[1] ** 0.5))
    if side * side != grid.shape[1]:
        raise ValueError(f"pos_embed has {grid.shape[1]} patch entries, not a square grid")
    grid = grid.transpose(1, 2).reshape(1, -1, side, side)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="nearest")
    return torch.cat((cls_pos, grid.flatten(2).transpose(1, 2)), dim=1)


class Block(nn.Module):
    """One transformer block; `attention_type` selects divided, joint space-time or space-only."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 attention_type: str = "divided_space_time", drop_path: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        self.attention_type = attention_type
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        if attention_type == "divided_space_time":
            self.temporal_norm1 = nn.LayerNorm(dim, eps=norm_eps)
            self.temporal_attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
            self.temporal_fc = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Joint / space-only: x [B, 1 + N·T, D] or [B·T, 1 + N, D] → same shape."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_divided(self, cls: torch.Tensor, patches: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Divided space-time: cls [B, 1, D], patches [B, N·T, D] (``b (n t) d``) → same shapes.

        CLS is carried apart from the patches so that no block slices or concatenates the whole
        token sequence; the math is the official block's, token for token.
        """
        b, nt, d = patches.shape
        n = nt // t
        # temporal: every patch location attends over its t frames; CLS takes no part
        res_t = self.drop_path(self.temporal_attn(self.temporal_norm1(patches.view(b * n, t, d))))
        patches = patches + self.temporal_fc(res_t.view(b, nt, d))
        # spatial: every frame attends over its n patches plus its own copy of CLS
        xs = patches.new_empty(b, t, n + 1, d)
        xs[:, :, 0] = cls
        xs[:, :, 1:] = rearrange(patches, "b (n t) d -> b t n d", t=t)
        res_s = self.drop_path(self.attn(self.norm1(xs.view(b * t, n + 1, d)))).view(b, t, n + 1, d)
        cls = cls + res_s[:, :, :1].mean(dim=1)                  # the t CLS outputs are averaged
        patches = (patches.view(b, n, t, d) + rearrange(res_s[:, :, 1:], "b t n d -> b n t d")).view(b, nt, d)
        # MLP, per token
        cls = cls + self.drop_path(self.mlp(self.norm2(cls)))
        patches = patches + self.drop_path(self.mlp(self.norm2(patches)))
        return cls, patches


class _NoHead(nn.Module):
    """Head of a model without classes: [B, D] → [B, 0]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :0]


class TimeSformer(nn.Module):
    """TimeSformer over clips x: float [B, 3, T, H, W], already normalised.

    `forward_features(x)` → CLS embedding after the final norm, [B, embed_dim];
    `forward_head(emb)` → logits [B, num_classes]; `forward(x)` does both.
    Inputs whose T or H, W differ from the model's get `time_embed` / `pos_embed` resized on the fly
    (nearest), as the official forward does.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 400,
                 embed_dim: int = 768, depth: int = 12, num_heads: int | None = None, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, num_frames: int = 8, attention_type: str = "divided_space_time",
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-6, fused_attn: bool = True):
        super().__init__()
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(f"attention_type {attention_type!r} is not one of {ATTENTION_TYPES}")
        num_heads = num_heads or max(1, embed_dim // 64)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.arch = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                         embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         qkv_bias=qkv_bias, num_frames=num_frames, attention_type=attention_type)
        self.attention_type, self.num_frames, self.num_classes = attention_type, num_frames, num_classes
        self.embed_dim, self.patch_size, self.in_chans = embed_dim, patch_size, in_chans
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim,
                                      output_fmt="NHWC", strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        if attention_type != "space_only":
            self.time_embed = nn.Parameter(torch.zeros(1, num_frames, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, attention_type, rates[i], norm_eps) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else _NoHead()
        self.set_fused_attn(fused_attn)
        self.init_weights()

    def set_fused_attn(self, enabled: bool) -> None:
        """True: F.scaled_dot_product_attention; False: the explicit softmax(QKᵀ)V reference path."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.fused_attn = enabled

    def init_weights(self, zero_temporal_fc: bool = True) -> None:
        """The official init: truncated normal (std 0.02) for embeddings and linears, LayerNorm 1/0,
        and `temporal_fc` zeroed in every block but the first (so training starts from ViT)."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if hasattr(self, "time_embed"):
            trunc_normal_(self.time_embed, std=0.02)
        self.apply(_init_module)
        if zero_temporal_fc and self.attention_type == "divided_space_time":
            for block in list(self.blocks)[1:]:
                nn.init.zeros_(block.temporal_fc.weight)
                nn.init.zeros_(block.temporal_fc.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected x of shape [B, {self.in_chans}, T, H, W], got {list(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input height {h} and width {w} must be multiples of the patch size {self.patch_size}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: float [B, 3, T, H, W] → CLS token after the final norm, [B, embed_dim]."""
        self._check_input(x)
        b, t = x.shape[0], x.shape[2]
        tokens = self.patch_embed(rearrange(x, "b c t h w -> (b t) c h w"))      # (b t) h w d
        grid_h, grid_w = tokens.shape[1:3]
        pos = resize_pos_embed(self.pos_embed, grid_h, grid_w)
        tokens = tokens.flatten(1, 2) + pos[:, 1:]
        cls = self.cls_token + pos[:, :1]
        if self.attention_type == "space_only":
            x = torch.cat((cls.expand(b * t, -1, -1), tokens), dim=1)
            for block in self.blocks:
                x = block(x, t)
            x = rearrange(x[:, 0], "(b t) d -> b t d", b=b).mean(dim=1)
            return self.norm(x)
        tokens = rearrange(tokens, "(b t) n d -> b n t d", b=b) + resize_time_embed(self.time_embed, t)[:, None]
        # CLS made contiguous: every block then sees inputs of one layout (one compiled graph serves all)
        tokens, cls = rearrange(tokens, "b n t d -> b (n t) d"), cls.expand(b, -1, -1).contiguous()
        if self.attention_type == "divided_space_time":
            for block in self.blocks:
                cls, tokens = block.forward_divided(cls, tokens, t)
            return self.norm(cls[:, 0])
        x = torch.cat((cls, tokens), dim=1)
        for block in self.blocks:
            x = block(x, t)
        return self.norm(x[:, 0])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """CLS embedding [B, D] → logits [B, num_classes] (or the embedding itself with pre_logits)."""
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_module(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
