"""The coordinate-wise LSTM meta-learner of Ravi & Larochelle (2017), "Optimization as a Model
for Few-Shot Learning", ICLR.

The learner's parameters are the cell state of an LSTM whose weights are shared across all
coordinates (every scalar parameter of the learner is one row of a batch):

    c_t = f_t * c_{t-1} - i_t * grad_t
    f_t = sigmoid(W_F . [h_t, c_{t-1}, f_{t-1}] + b_F)      (forget gate: decay of the weights)
    i_t = sigmoid(W_I . [h_t, c_{t-1}, i_{t-1}] + b_I)      (input gate: the learning rate)

where ``h_t`` is the output of a first, ordinary LSTM layer whose inputs are the preprocessed
loss and gradient (:func:`metactl.nn.functional.preprocess_gradients`), and ``c_0`` is the
learner's learned initialisation. With ``f = 1`` and ``i = lr`` the update is plain SGD. As in
the authors' code, the previous gate values fed back are the pre-sigmoid activations, and the
biases start so that ``f`` is close to 1 and ``i`` close to 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metactl.nn.functional import preprocess_gradients


@dataclass
class MetaLSTMState:
    """Recurrent state per task and coordinate.

    Attributes:
        hidden, cell: the first layer's state, (T * P, lstm_hidden).
        forget, input: previous pre-sigmoid gate activations, (T, P).
    """

    hidden: Tensor
    cell: Tensor
    forget: Tensor
    input: Tensor


class MetaLSTM(nn.Module):
    """The two-layer coordinate-wise meta-learner: an LSTM cell on the preprocessed loss and
    gradient (4 inputs), then the gates that update the learner's parameters.

    Args:
        hidden: units of the first layer (20 in the paper).
        power: p of the gradient preprocessing (10).
    """

    def __init__(self, hidden: int = 20, power: float = 10.0) -> None:
        super().__init__()
        self.power = power
        self.lstm = nn.LSTMCell(4, hidden)
        # [h_t (hidden), c_{t-1}, previous gate] -> gate activation
        self.forget_weight = nn.Parameter(torch.empty(hidden + 2))
        self.input_weight = nn.Parameter(torch.empty(hidden + 2))
        self.forget_bias = nn.Parameter(torch.empty(()))
        self.input_bias = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' initialisation: everything uniform in [-0.01, 0.01], then the forget bias
        in [4, 5] (f near 1) and the input bias in [-5, -4] (i near 0.01): the learner starts
        out doing gradient descent with a small step."""
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -0.01, 0.01)
        nn.init.uniform_(self.forget_bias, 4.0, 5.0)
        nn.init.uniform_(self.input_bias, -5.0, -4.0)

    def initial_state(self, parameters: Tensor) -> MetaLSTMState:
        """Zero state for learner parameters of shape (T, P)."""
        tasks, size = parameters.shape
        zeros = parameters.new_zeros(tasks * size, self.lstm.hidden_size)
        gates = parameters.new_zeros(tasks, size)
        return MetaLSTMState(zeros, zeros, gates, gates)

    def forward(self, parameters: Tensor, gradients: Tensor, losses: Tensor,
                state: MetaLSTMState | None = None) -> tuple[Tensor, MetaLSTMState]:
        """One update of the learner's parameters.

        Args:
            parameters: c_{t-1}, the learner's flattened parameters per task, (T, P).
            gradients: the learner's loss gradient at c_{t-1}, (T, P); treated as an input
                (the caller detaches it: no second derivatives, as in the paper).
            losses: the learner's loss at c_{t-1}, (T,).
            state: from the previous call, or None at the first step.

        Returns:
            c_t, (T, P), and the new state.
        """
        tasks, size = parameters.shape
        if state is None:
            state = self.initial_state(parameters)
        loss_inputs = preprocess_gradients(losses, self.power)  # (T, 2)
        gradient_inputs = preprocess_gradients(gradients, self.power)  # (T, P, 2)
        inputs = torch.cat([loss_inputs.unsqueeze(1).expand(tasks, size, 2), gradient_inputs],
                           dim=-1)
        hidden, cell = self.lstm(inputs.view(tasks * size, 4), (state.hidden, state.cell))
        features = hidden.view(tasks, size, -1)
        forget = self._gate(features, parameters, state.forget, self.forget_weight,
                            self.forget_bias)
        input_gate = self._gate(features, parameters, state.input, self.input_weight,
                                self.input_bias)
        updated = torch.sigmoid(forget) * parameters - torch.sigmoid(input_gate) * gradients
        return updated, MetaLSTMState(hidden, cell, forget, input_gate)

    @staticmethod
    def _gate(features: Tensor, parameters: Tensor, previous: Tensor, weight: Tensor,
              bias: Tensor) -> Tensor:
        hidden = features.shape[-1]
        return (features @ weight[:hidden] + parameters * weight[hidden]
                + previous * weight[hidden + 1] + bias)


class LearnerWithMetaLSTM(nn.Module):
    """Everything Meta-Learner LSTM trains: the learner, whose parameters are the initial cell
    state c_0, and the meta-learner that updates them.

    :class:`metactl.nn.inner_loops.LSTMUpdate` works with any module that has these two
    attributes, so a plugin can pair another learner with the same meta-learner.
    """

    def __init__(self, learner: nn.Module, hidden: int = 20) -> None:
        super().__init__()
        self.learner = learner
        self.meta_lstm = MetaLSTM(hidden)

    def forward(self, images: Tensor) -> Tensor:
        """The learner with its initial parameters: (batch, C, H, W) -> (batch, way)."""
        return self.learner(images)
