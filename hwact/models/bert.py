"""BERT-style encoder (Devlin et al.): token + position embeddings, post-norm blocks with a
tanh-approximate GELU FFN (as the original TF code), tanh pooler and a classification head."""

from __future__ import annotations

import torch
import torch.nn as nn

from hwact.models.common import Attention, Mlp


class BertLayer(nn.Module):
    def __init__(self, dim, heads, hidden, gelu):
        super().__init__()
        self.attn = Attention(dim, heads)
        self.attn_norm = nn.LayerNorm(dim, eps=1e-12)
        self.ffn = Mlp(dim, hidden, gelu)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x):
        x = self.attn_norm(x + self.attn(x))
        return self.ffn_norm(x + self.ffn(x))


class Bert(nn.Module):
    def __init__(self, vocab=30522, max_len=512, dim=768, depth=12, heads=12, hidden=3072, num_classes=2,
                 gelu="tanh"):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, dim)
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.embed_norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.Sequential(*[BertLayer(dim, heads, hidden, gelu) for _ in range(depth)])
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, input_ids):
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed_norm(self.word_embeddings(input_ids) + self.position_embeddings(positions))
        x = self.layers(x)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))
