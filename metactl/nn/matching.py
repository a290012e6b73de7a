"""The networks of Matching Networks (Vinyals et al. 2016): an embedding shared by support and
query images, and the optional full-context embeddings (FCE) of the support set and queries."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from metactl.nn.backbones import embed_tasks


class MatchingNetwork(nn.Module):
    """Embeds support sets and queries; with ``fce``, in the context of the whole support set.

    Without FCE both are the encoder's output, f = g = f'. With FCE (paper, appendix A.2):

    - g(x_i, S) = g'(x_i) + h_forward_i + h_backward_i, a bidirectional LSTM with ``features``
      hidden units run over the support set as a sequence;
    - f(x, S) = h_K after K steps of an attention LSTM: h_0 = f'(x), c_0 = 0,
      r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i),
      h_{k+1}, c_{k+1} = LSTM(f'(x), [h_k, r_k], c_k); h_{k+1} += f'(x).
      The paper's LSTM takes [h_k, r_k] as its hidden state; an LSTM cell's gates are linear in
      the concatenation of input and hidden state, so this is a standard cell whose input is
      [f'(x), r_k] and whose hidden state is h_k (the same function, the same parameters).

    Args:
        encoder: maps (N, C, H, W) to (N, features).
        features: the encoder's output size.
        fce: add the full-context embeddings.
        steps: K, the attention LSTM's processing steps.
    """

    def __init__(self, encoder: nn.Module, features: int, fce: bool = False, steps: int = 5
                 ) -> None:
        super().__init__()
        self.encoder = encoder
        self.features, self.steps = features, steps
        self.support_lstm = (nn.LSTM(features, features, batch_first=True, bidirectional=True)
                             if fce else None)
        self.query_lstm = nn.LSTMCell(2 * features, features) if fce else None

    def embed_support(self, images: Tensor) -> Tensor:
        """g: (T, S, C, H, W) -> (T, S, features)."""
        return self.support_context(embed_tasks(self.encoder, images))

    def embed_queries(self, images: Tensor, support: Tensor) -> Tensor:
        """f: query images (T, Q, C, H, W) and g(support) (T, S, features) -> (T, Q, features)."""
        return self.query_context(embed_tasks(self.encoder, images), support)

    def embed_episode(self, support_images: Tensor, query_images: Tensor
                      ) -> tuple[Tensor, Tensor]:
        """g(support) and f(queries) with one encoder forward over both sets, so that batch norm
        normalises them with the same statistics (training).

        Args:
            support_images: (T, S, C, H, W).
            query_images: (T, Q, C, H, W).

        Returns:
            (T, S, features) and (T, Q, features).
        """
        embedded = embed_tasks(self.encoder, torch.cat([support_images, query_images], dim=1))
        support = self.support_context(embedded[:, :support_images.shape[1]])
        return support, self.query_context(embedded[:, support_images.shape[1]:], support)

    def support_context(self, embedded: Tensor) -> Tensor:
        """g(x_i, S) from the encoder's f'(x_i), (T, S, features)."""
        if self.support_lstm is None:
            return embedded
        context, _ = self.support_lstm(embedded)  # (T, S, 2 * features)
        forward, backward = context.split(self.features, dim=-1)
        return embedded + forward + backward

    def query_context(self, embedded: Tensor, support: Tensor) -> Tensor:
        """f(x, S) from the encoder's f'(x) (T, Q, features) and g(support) (T, S, features)."""
        if self.query_lstm is None:
            return embedded
        tasks, queries, features = embedded.shape
        hidden = embedded
        cell = torch.zeros(tasks * queries, features, dtype=embedded.dtype,
                           device=embedded.device)
        for _ in range(self.steps):
            attention = (hidden @ support.transpose(1, 2)).softmax(-1)  # (T, Q, S)
            readout = attention @ support  # (T, Q, features)
            step_input = torch.cat([embedded, readout], dim=-1).flatten(0, 1)
            hidden, cell = self.query_lstm(step_input, (hidden.flatten(0, 1), cell))
            hidden = hidden.view(tasks, queries, features) + embedded
        return hidden
