from __future__ import annotations

import torch

from specplug.models.kv_cache import StaticKVCache


def test_gqa_layout_write_read_rollback_and_move():
    cache = StaticKVCache(num_layers=2, slots=3, kv_heads=3, max_len=16, head_dim=4, dtype=torch.float32)
    k_buf, v_buf = cache.layer(0)
    assert k_buf.shape == (3, 3, 16, 4)  # [slots, kv_heads, max_len, head_dim]: KV heads not repeated
    k = torch.randn(2, 5, 3, 4)  # [B, T, kv_heads, head_dim]
    positions = torch.tensor([[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]])
    cache.write(0, slice(1, 3), positions, k, -k)
    keys, values = cache.read(0, slice(1, 3), 8)
    assert torch.equal(keys[0, :, :5], k[0].transpose(0, 1))
    assert torch.equal(values[1, :, 3:8], -k[1].transpose(0, 1))
    assert torch.count_nonzero(k_buf[0]) == 0  # slot 0 untouched
    cache.lengths[1:3] = [5, 8]
    cache.rollback(2, 4)
    assert cache.lengths == [0, 5, 4]
    cache.move(2, 0)
    assert cache.lengths == [4, 5, 0]
    assert torch.equal(cache.read(0, slice(0, 1), 4)[0][0], k_buf[2, :, :4])


def test_rollback_cannot_grow():
    cache = StaticKVCache(1, 1, 1, 8, 2, torch.float32)
    cache.lengths[0] = 3
    try:
        cache.rollback(0, 5)
    except ValueError as exc:
        assert "holds 3" in str(exc)
    else:
        raise AssertionError("rollback past the valid length must fail")
