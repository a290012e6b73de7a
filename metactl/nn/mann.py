"""Memory-augmented neural network (Santoro et al. 2016): a controller with an external memory
that it reads by content and writes by least-recently-used access.

Shapes: ``B`` sequences (tasks), ``N`` memory slots of ``W`` numbers, ``H`` read heads, ``L``
label slots. The memory functions are pure so that each defining rule can be tested alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as functional
from torch import Tensor, nn

from metactl.errors import UsageError

# Unwritten slots hold this value rather than zero so that their cosine similarity is defined.
BLANK = 1e-6
CONTROLLERS = ("lstm", "feedforward")


@dataclass(frozen=True)
class MemoryState:
    """Everything a MANN carries from one time step to the next.

    Attributes:
        memory: (B, N, W).
        usage: usage weights w^u, (B, N).
        read_weights: w^r of the last step, (B, H, N).
        reads: r of the last step, (B, H, W).
        hidden, cell: the LSTM controller's state, (B, size); ``None`` for feed-forward.
        last_label: one-hot label of the previous input, shown with the next one, (B, L).
    """

    memory: Tensor
    usage: Tensor
    read_weights: Tensor
    reads: Tensor
    hidden: Tensor | None
    cell: Tensor | None
    last_label: Tensor

    def repeat_each(self, times: int) -> MemoryState:
        """Each sequence's state ``times`` times in a row: (B, ...) -> (B * times, ...)."""
        def repeat(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor.repeat_interleave(times, dim=0)

        return MemoryState(*(repeat(getattr(self, name)) for name in self.__dataclass_fields__))


def cosine_similarity(keys: Tensor, memory: Tensor) -> Tensor:
    """K(k, M(i)) for every head and slot: keys (B, H, W), memory (B, N, W) -> (B, H, N)."""
    return functional.normalize(keys, dim=-1, eps=1e-8) @ functional.normalize(
        memory, dim=-1, eps=1e-8).transpose(1, 2)


def content_weights(keys: Tensor, memory: Tensor, strength: float | Tensor = 1.0) -> Tensor:
    """Read weights w^r: a softmax over slots of the cosine similarity to each key (times a key
    strength; the paper's equation is strength 1). keys (B, H, W), memory (B, N, W) -> (B, H, N).
    """
    return (cosine_similarity(keys, memory) * strength).softmax(-1)


def read(weights: Tensor, memory: Tensor) -> Tensor:
    """r = sum_i w^r(i) M(i): weights (B, H, N), memory (B, N, W) -> (B, H, W)."""
    return weights @ memory


def least_used(usage: Tensor, count: int) -> Tensor:
    """w^lu: 1 at the ``count`` slots of smallest usage, 0 elsewhere (ties go to the lower
    slot): usage (B, N) -> (B, N)."""
    slots = usage.argsort(dim=-1, stable=True)[:, :count]
    return torch.zeros_like(usage).scatter_(1, slots, 1.0)


def write_weights(gates: Tensor, previous_read: Tensor, previous_least_used: Tensor) -> Tensor:
    """w^w = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1}: write either where the
    head last read (to update a memory) or to the least-used slots (to store a new one).

    Args:
        gates: alpha, one per head, (B, H).
        previous_read: w^r_{t-1}, (B, H, N).
        previous_least_used: w^lu_{t-1}, (B, N).

    Returns:
        (B, H, N).
    """
    mix = torch.sigmoid(gates).unsqueeze(-1)
    return mix * previous_read + (1 - mix) * previous_least_used.unsqueeze(1)


def write(memory: Tensor, previous_usage: Tensor, weights: Tensor, keys: Tensor) -> Tensor:
    """Zero the least-used slot (by the previous usage), then M(i) += sum_h w^w_h(i) k_h.

    Args:
        memory: (B, N, W).
        previous_usage: w^u_{t-1}, (B, N).
        weights: w^w, (B, H, N).
        keys: k, (B, H, W).

    Returns:
        (B, N, W).
    """
    erased = least_used(previous_usage, 1).unsqueeze(-1)
    return memory * (1 - erased) + weights.transpose(1, 2) @ keys


def updated_usage(usage: Tensor, read_weights: Tensor, write_weights: Tensor,
                  decay: float) -> Tensor:
    """w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t, summed over heads: (B, N)."""
    return decay * usage + read_weights.sum(1) + write_weights.sum(1)


class MemoryAugmentedNetwork(nn.Module):
    """The MANN of Santoro et al. (2016), section 3.1.

    At each step the controller (an LSTM, or one ReLU layer) sees the flattened image, the
    previous image's one-hot label and the previous reads. Each head turns the controller output
    into a key (tanh) and a write gate alpha; the key is written with least-recently-used
    weights, then read back by content. The output layer maps the controller output and the
    reads to one score per label slot.

    Args:
        inputs: numbers per image (C * H * W).
        label_slots: L, the size of the one-hot labels and of the output.
        controller: ``"lstm"`` or ``"feedforward"``.
        controller_size: units of the controller.
        slots, width: N and W of the memory.
        heads: H, read heads (each also writes its key).
        usage_decay: gamma.
        key_strength: multiplies the cosine similarities before the softmax: a number (1: the
            paper's equation), or ``"learned"`` for the Neural Turing Machine's key strength,
            beta = softplus(.) emitted by each head at each step.
    """

    def __init__(self, inputs: int, label_slots: int, controller: str = "lstm",
                 controller_size: int = 200, slots: int = 128, width: int = 40, heads: int = 4,
                 usage_decay: float = 0.95, key_strength: float | str = 1.0) -> None:
        super().__init__()
        if controller not in CONTROLLERS:
            raise UsageError(f"unknown MANN controller {controller!r}",
                             f"use --set controller={' or '.join(CONTROLLERS)}")
        if heads > slots:
            raise UsageError(f"{heads} read heads need at least as many memory slots, "
                             f"got {slots}", "raise memory_slots or lower read_heads")
        self.label_slots, self.slots, self.width, self.heads = label_slots, slots, width, heads
        self.usage_decay = usage_decay
        self.learns_key_strength = key_strength == "learned"
        self.key_strength = 1.0 if self.learns_key_strength else float(key_strength)
        controller_inputs = inputs + label_slots + heads * width
        if controller == "lstm":
            self.controller = nn.LSTMCell(controller_inputs, controller_size)
        else:
            self.controller = nn.Linear(controller_inputs, controller_size)
        self.head_size = width + (2 if self.learns_key_strength else 1)
        self.head_parameters = nn.Linear(controller_size, heads * self.head_size)
        self.output = nn.Linear(controller_size + heads * width, label_slots)

    @property
    def uses_lstm(self) -> bool:
        return isinstance(self.controller, nn.LSTMCell)

    def initial_state(self, batch: int, device: torch.device | None = None,
                      dtype: torch.dtype | None = None) -> MemoryState:
        """A wiped memory: blank slots, zero usage, reads and label."""
        like = self.output.weight
        options = {"device": device or like.device, "dtype": dtype or like.dtype}
        size = self.controller.hidden_size if self.uses_lstm else 0
        hidden = torch.zeros(batch, size, **options) if self.uses_lstm else None
        return MemoryState(
            memory=torch.full((batch, self.slots, self.width), BLANK, **options),
            usage=torch.zeros(batch, self.slots, **options),
            read_weights=torch.zeros(batch, self.heads, self.slots, **options),
            reads=torch.zeros(batch, self.heads, self.width, **options),
            hidden=hidden, cell=None if hidden is None else torch.zeros_like(hidden),
            last_label=torch.zeros(batch, self.label_slots, **options))

    def step(self, state: MemoryState, images: Tensor) -> tuple[Tensor, MemoryState]:
        """One time step: images (B, inputs) -> scores (B, L) and the next state (whose
        ``last_label`` the caller sets once the label is known)."""
        inputs = torch.cat([images, state.last_label, state.reads.flatten(1)], dim=1)
        if self.uses_lstm:
            hidden, cell = self.controller(inputs, (state.hidden, state.cell))
            output = hidden
        else:
            hidden, cell = None, None
            output = torch.relu(self.controller(inputs))
        head = self.head_parameters(output).view(-1, self.heads, self.head_size)
        keys, gates = torch.tanh(head[..., :self.width]), head[..., self.width]
        strength = (functional.softplus(head[..., -1:]) if self.learns_key_strength
                    else self.key_strength)
        writing = write_weights(gates, state.read_weights, least_used(state.usage, self.heads))
        memory = write(state.memory, state.usage, writing, keys)
        reading = content_weights(keys, memory, strength)
        reads = read(reading, memory)
        usage = updated_usage(state.usage, reading, writing, self.usage_decay)
        scores = self.output(torch.cat([output, reads.flatten(1)], dim=1))
        return scores, MemoryState(memory, usage, reading, reads, hidden, cell, state.last_label)

    def run_sequence(self, images: Tensor, labels: Tensor, state: MemoryState | None = None
                     ) -> tuple[Tensor, MemoryState]:
        """Present a labelled sequence, each label one step after its image.

        Args:
            images: (B, T, inputs).
            labels: int64, (B, T), values in [0, L).
            state: where to start; a wiped memory by default.

        Returns:
            Scores (B, T, L), each made before its own label was shown, and the state after the
            last step (holding the last label, still to be shown).
        """
        self.check_labels(labels)
        if state is None:
            state = self.initial_state(images.shape[0], images.device, images.dtype)
        one_hot = functional.one_hot(labels, self.label_slots).to(state.memory.dtype)
        scores = []
        for t in range(images.shape[1]):
            step_scores, state = self.step(state, images[:, t])
            state = replace(state, last_label=one_hot[:, t])
            scores.append(step_scores)
        return torch.stack(scores, dim=1), state

    def answer(self, state: MemoryState, images: Tensor) -> Tensor:
        """Score unlabelled images, each as the next step after ``state`` on its own (no image
        sees another): images (B, Q, inputs) -> (B, Q, L)."""
        batch, queries = images.shape[:2]
        scores, _ = self.step(state.repeat_each(queries), images.flatten(0, 1))
        return scores.view(batch, queries, -1)

    def check_labels(self, labels: Tensor) -> None:
        if labels.numel() and int(labels.max()) >= self.label_slots:
            raise UsageError(f"this MANN has {self.label_slots} label slots and the tasks have "
                             f"{int(labels.max()) + 1} classes",
                             f"use --way {self.label_slots} or fewer, or train with "
                             f"--set label_slots={int(labels.max()) + 1}")
