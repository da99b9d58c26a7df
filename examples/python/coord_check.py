"""Does my model keep its activations and their updates the same size as it widens? A coordinate
check of a GPT-style model under the standard parametrisation, with AdamW.

    python3 examples/python/coord_check.py [OUT_DIR]
"""
import sys

import torch
import torch.nn as nn

import gradflow


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        h = self.ln_1(x)
        mask = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), 1)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, width, vocab=64, context=32, layers=2):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(context, width)
        self.blocks = nn.Sequential(*[Block(width, max(1, width // 32)) for _ in range(layers)])
        self.ln_f, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        return self.head(self.ln_f(self.blocks(x)))


torch.manual_seed(0)
tokens = torch.randint(0, 64, (16, 33))
result = gradflow.coord_check(GPT, [32, 64, 128, 256], (tokens[:, :-1], tokens[:, 1:]),
                              lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3), steps=4,
                              out=sys.argv[1] if len(sys.argv) > 1 else "gradflow-coord", force=True)
print(result)
for f in result.findings:
    print(f"{f.kind}: {f.message}\n  remedy: {f.remedy}")
