"""CFE window attention must ignore the padding it adds (issue 16, item 3)."""
import torch

from edgehaze.models.fusion import WindowSelfAttention


def _reference(attn: WindowSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Attention within each window over its REAL tokens only, no padding at all."""
    b, c, h, w = x.shape
    ws, heads = attn.window, attn.heads
    d = c // heads
    qkv = attn.qkv(x)
    mixed = torch.zeros(b, c, h, w)
    for y0 in range(0, h, ws):
        for x0 in range(0, w, ws):
            tile = qkv[:, :, y0:y0 + ws, x0:x0 + ws]
            th, tw = tile.shape[-2:]
            t = tile.reshape(b, 3, heads, d, th * tw)
            q, k, v = t[:, 0], t[:, 1], t[:, 2]
            a = torch.softmax(q.transpose(-2, -1) @ k * d ** -0.5, dim=-1)
            o = (a @ v.transpose(-2, -1)).transpose(-2, -1).reshape(b, c, th, tw)
            mixed[:, :, y0:y0 + ws, x0:x0 + ws] = o
    return attn.proj(mixed)


def test_masked_attention_on_padded_input_equals_attention_on_real_tokens():
    torch.manual_seed(0)
    attn = WindowSelfAttention(8, heads=2, window=8)
    for h, w in ((5, 6), (11, 13), (16, 9)):
        x = torch.rand(2, 8, h, w)
        with torch.no_grad():
            assert torch.allclose(attn(x), _reference(attn, x), atol=1e-5), (h, w)


def test_padding_amount_does_not_change_border_windows():
    """The same real content gives the same output whatever else is in the padding."""
    torch.manual_seed(1)
    attn = WindowSelfAttention(8, heads=2, window=4)
    x = torch.rand(1, 8, 6, 6)
    with torch.no_grad():
        out = attn(x)
        # the top-left 4x4 window is complete: equal to running on that crop alone
        assert torch.allclose(out[..., :4, :4], attn(x[..., :4, :4]), atol=1e-5)
        # the bottom-right 2x2 window is padded: equal to running on that crop alone
        assert torch.allclose(out[..., 4:, 4:], attn(x[..., 4:, 4:]), atol=1e-5)
