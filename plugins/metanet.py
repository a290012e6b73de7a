"""Meta Networks (MetaNet) as a metactl plugin."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metactl import hookimpl
from metactl.algorithm import Algorithm, DeviceSettings, LabelledImages, ModelSpec, PaperResult
from metactl.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from metactl.nn.functional import Parameters
    from metactl.nn.metanet import MetaNetState, MetaNetwork
    from metactl.plugins import AlgorithmRegistry

REPRESENTATION_LOSSES = ("auto", "cross-entropy", "contrastive")


class MetaNet(Algorithm):
    """Munkhdalai & Yu (2017), "Meta Networks", ICML.

    A base learner b (slow weights W) classifies each input with *example-level fast weights*
    W* as well; a meta learner turns loss gradients into fast weights. Its dynamic
    representation function u (slow weights Q) gets *task-level fast weights* Q* and embeds
    inputs in the task's space. Every augmented layer transforms its input with its slow and its
    fast weights, passes each through a ReLU and adds them (the softmax layer adds before the
    softmax). The networks (:mod:`metactl.nn.metanet`), for 28x28 Omniglot: b and u are each
    five blocks of a 3x3 convolution with 64 filters, ReLU and 2x2 max-pooling, then a fully
    connected layer of 64 units; b ends in a softmax layer, u's output is the fully connected
    layer, r. m is a three-layer MLP (2 -> 20 -> 20 -> 1, ReLU) and d a one-layer LSTM of 20
    units with a linear read-out, both applied to every gradient coordinate with shared weights,
    on gradients preprocessed as in Andrychowicz et al. (2016) with p = 7.

    How the paper's three stages map onto the plugin API:

    - ``adapt`` (stages 1-2, meta information and fast weight generation, per task):
      1. S = ``representation_samples`` items of the support set - groups of images, with the
         cross-entropy of u's softmax layer (one-shot training), or pairs, with the contrastive
         loss (k-shot) - give S gradients of u's representation loss, grad_Q L_s;
         Q* = d(G, {grad_s}), reading them in turn.
      2. Every support image's cross-entropy under b's slow weights gives grad_W L_i and
         W*_i = m(Z, grad_W L_i), stored in the memory M; r'_i = u(Q, Q*, x'_i) in R.
      Per-example gradients are ``vmap(grad(...))`` of :mod:`torch.func`; the task state is a
      :class:`~metactl.nn.metanet.MetaNetState` (Q*, M, R).
    - ``logits`` (the query pass): r = u(Q, Q*, x); a = softmax of the cosine similarities of r
      with R; W* = a^T M; scores b(W, W*, x), each query run with its own fast weights (vmap).
    - The engine's outer optimizer (stage 3, slow weight optimisation): the query cross-entropy
      is minimised over Theta = {W, Q, Z, G} by Adam (lr 1e-3), one episode per step.

    As in the authors' code, the gradients fed to m and d are constants (no second derivatives:
    the meta-gradient reaches Z and G through the fast weights, W and Q through the slow
    branches and the representations), and u's softmax layer, used only to produce meta
    information, receives no gradient and keeps its random initialisation.

    Deviation from the paper, for training to start: the output units of m and d are
    initialised with weights from U[-0.01, 0.01) and bias 0.001 (``fast_init_range``,
    ``fast_init``) instead of U[-0.1, 0.1). The generators first give nearly every coordinate
    the same fast weight; with the paper's range that constant reaches +-0.1, which over a 3x3x64
    kernel multiplies activations by up to ~50 per augmented layer (measured: first loss 2,418,
    then outputs collapse to a constant with zero gradient) or, negative, silences the fast
    branch behind its ReLU.

    Choices where the paper is silent or differs from the authors' code (see
    ``docs/algorithms/metanet.md``): all six hidden layers of b and u are augmented for Omniglot
    (the authors' Omniglot code; the paper's "last three layers" is their mini-ImageNet code,
    the default for other datasets); separate m and d for convolution kernels and fully
    connected weights (the authors' code); in one-shot training the S items are the support set
    split at random into S groups (the authors' code, S = 5; one image per group in 5-way
    1-shot, the paper's per-example gradients); contrastive pairs are half same-class (the
    paper draws them at random, which in 5-way 5-shot gives a same-class pair one time in six)
    with margin ``contrastive_margin`` (not stated); gradient-norm clipping at 10 (the authors'
    code); the number of training episodes (not stated).

    The softmax layers have one output per training class, so a model evaluates tasks of at
    most ``train_way`` classes (fewer use the first rows); more raise a :class:`UsageError`.

    Shapes: support images (T, N, C, H, W) with labels (T, N), queries (T, Q, C, H, W), logits
    (T, Q, way).
    """

    name = "metanet"
    family = "model"
    summary = "a meta learner turns loss gradients into fast weights, read from a memory"
    paper = "Munkhdalai & Yu (2017). Meta Networks. ICML."
    # Table 1 (one-shot Omniglot): one model per way, since the softmax layers are tied to it;
    # trained on the 1,200 train + val characters as in the paper.
    paper_protocols = {f"omniglot-{way}w1s": {"dataset": "omniglot", "way": way, "shot": 1,
                                              "train_split": "trainval"}
                       for way in (5, 10, 15, 20)}
    paper_results = tuple(
        PaperResult("omniglot", way, 1, accuracy, f"omniglot-{way}w1s", source="Table 1")
        for way, accuracy in ((5, 98.95), (10, 98.67), (15, 97.11), (20, 97.00)))
    defaults = {
        # Section 4.1 and the authors' code: Adam 1e-3, one episode per step, U[-0.1, 0.1)
        # initialisation (but m's and d's output units: fast_init), m and d of 20 units, p = 7,
        # S = 5, gradient norm clipped at 10; 32 filters and the last three layers augmented
        # for mini-ImageNet. The paper does not state the number of episodes.
        "*": {"hidden": 32, "blocks": 5, "augmented_layers": 3, "generator_hidden": 20,
              "gradient_power": 7.0, "representation_samples": 5,
              "representation_loss": "auto", "contrastive_margin": 1.0,
              "task_fast_weights": True, "init_range": 0.1, "fast_init": 1e-3,
              "fast_init_range": 0.01, "optimizer": "adam", "lr": 1e-3,
              "grad_clip": 10.0, "meta_batch": 1, "episodes": 40_000},
        # mini-ImageNet: the "*" settings (32 filters, the last three layers augmented).
        "mini-imagenet": {"hidden": 32, "augmented_layers": 3},
        # Omniglot: 64 filters, every layer augmented, 10 queries per class in training (the
        # authors' train_omniglot.py).
        "omniglot": {"hidden": 64, "augmented_layers": 6, "train_query": 10},
    }
    hyperparameter_help = {
        "hidden": "filters of each conv layer and units of the fully connected layer of b and u",
        "blocks": "conv blocks (3x3 conv, ReLU, 2x2 max-pool) of b and u",
        "augmented_layers": "hidden layers of b and u with fast weights, counted from the last "
                            "(blocks + 1: all); b's softmax layer always has them",
        "generator_hidden": "hidden units of m (three-layer MLP) and d (one-layer LSTM)",
        "gradient_power": "p of the log-and-sign gradient preprocessing fed to m and d",
        "representation_samples": "S, the sampled support items (groups or pairs) whose "
                                  "representation-loss gradients d reads",
        "representation_loss": "u's loss for meta information: auto (cross-entropy if "
                               "train_shot is 1, else contrastive), cross-entropy or contrastive",
        "contrastive_margin": "margin of the contrastive representation loss",
        "task_fast_weights": "give u task-level fast weights from d (false: MetaNet-)",
        "init_range": "initialise every parameter from U[-r, r) (0: PyTorch's defaults)",
        "fast_init": "bias of m's and d's output units: the value fast weights start near",
        "fast_init_range": "m's and d's output weights start in U[-r, r) (the paper: init_range)",
    }
    # float32: fast weights are generated from gradients of tiny magnitude; per-example weights
    # under vmap lose the channels-last layout.
    device = DeviceSettings(mixed_precision=None, channels_last=False)

    def __init__(self, hparams: dict[str, Any]) -> None:
        super().__init__(hparams)
        loss = self.hparams["representation_loss"]
        if loss not in REPRESENTATION_LOSSES:
            raise UsageError(f"unknown representation_loss {loss!r}",
                             f"use one of {', '.join(REPRESENTATION_LOSSES)}")
        if loss == "auto":
            shot = self.hparams.get("train_shot") or self.hparams.get("shot") or 1
            loss = "cross-entropy" if int(shot) == 1 else "contrastive"
        self.representation_loss = loss
        if int(self.hparams["representation_samples"]) < 1:
            raise UsageError("representation_samples must be at least 1",
                             "pass e.g. --set representation_samples=5")

    def build_model(self, spec: ModelSpec) -> nn.Module:
        from metactl.nn.metanet import MetaNetwork

        return MetaNetwork(spec.channels, (spec.height, spec.width), spec.way,
                           hidden=int(self.hparams["hidden"]),
                           blocks=int(self.hparams["blocks"]),
                           augmented=int(self.hparams["augmented_layers"]),
                           generator_hidden=int(self.hparams["generator_hidden"]),
                           power=float(self.hparams["gradient_power"]),
                           classifier_head=self.representation_loss == "cross-entropy",
                           task_fast_weights=bool(self.hparams["task_fast_weights"]),
                           init_range=float(self.hparams["init_range"]),
                           fast_init=float(self.hparams["fast_init"]),
                           fast_init_range=float(self.hparams["fast_init_range"]))

    def adapt(self, model: MetaNetwork, support: LabelledImages) -> MetaNetState:
        """Stages 1-2 on a batch of support sets (T, N, C, H, W): Q*, then M and R."""
        from metactl.nn.metanet import (
            MetaNetState,
            cross_entropy_item,
            example_gradients,
            generate,
            task_representations,
        )

        if support.way > model.way:
            raise UsageError(f"this MetaNet model has {model.way} outputs, the tasks have "
                             f"{support.way} classes",
                             f"give it tasks of at most {model.way} classes (--way "
                             f"{model.way}), or train with --way {support.way}")
        images, labels = support.images, support.labels
        tasks, size = labels.shape
        task_weights = self._task_weights(model, support) if model.task_fast_weights else {}
        base = model.base.slow_weights(support.way)
        gradients = example_gradients(base, model.base.augmented, cross_entropy_item,
                                      images.flatten(0, 1).unsqueeze(1), labels.reshape(-1, 1))
        gradients = {name: value.view(tasks, size, *value.shape[1:])
                     for name, value in gradients.items()}
        memory = generate(model.example_generators, gradients, lead=2)
        keys = task_representations(model.representation.slow_weights(), images, task_weights)
        return MetaNetState(task_weights, memory, keys, support.way)

    def _task_weights(self, model: MetaNetwork, support: LabelledImages) -> Parameters:
        """Q* = d(G, {grad_Q L_s}) for S sampled items of each support set, name -> (T, *shape)."""
        import torch

        from metactl.nn.metanet import (
            balanced_pairs,
            contrastive_item,
            cross_entropy_item,
            example_gradients,
            generate,
            sample_groups,
        )

        images, labels = support.images, support.labels
        tasks = labels.shape[0]
        samples = int(self.hparams["representation_samples"])
        generator = self._generator(model)
        rows = torch.arange(tasks, device=labels.device).unsqueeze(1)
        params = model.representation.slow_weights(support.way)
        if self.representation_loss == "cross-entropy":
            groups = sample_groups(tasks, labels.shape[1], samples, generator).to(labels.device)
            items = (images[rows.unsqueeze(2), groups], labels[rows.unsqueeze(2), groups])
            loss = cross_entropy_item
        else:
            pairs = balanced_pairs(labels, samples, generator)
            pair_images = torch.stack([images[rows, pairs.first], images[rows, pairs.second]],
                                      dim=2)  # (T, S, 2, C, H, W)
            items = (pair_images, pairs.same.to(images.dtype))
            loss = contrastive_item(float(self.hparams["contrastive_margin"]))
        steps = items[1].shape[1]
        gradients = example_gradients(params, model.representation.augmented, loss,
                                      *(item.flatten(0, 1) for item in items))
        gradients = {name: value.view(tasks, steps, *value.shape[1:])
                     for name, value in gradients.items()}
        return generate(model.task_generators, gradients, lead=2)

    def _generator(self, model: nn.Module) -> torch.Generator | None:
        """Training samples with torch's global generator (seeded and checkpointed by the
        engine); evaluation with a fixed one, so that predictions are repeatable."""
        import torch

        return None if model.training else torch.Generator().manual_seed(0)

    def logits(self, model: MetaNetwork, state: MetaNetState, query_images: Tensor) -> Tensor:
        """Stage 3's query pass: each query reads its fast weights from M by attention over R
        and is classified by b with them, (T, Q, way)."""
        import torch

        from metactl.nn.metanet import attention, query_scores, task_representations

        queries = task_representations(model.representation.slow_weights(), query_images,
                                       state.task_weights)
        weights = attention(queries, state.keys)
        base = model.base.slow_weights(state.way)
        return torch.stack([
            query_scores(base, query_images[task], weights[task],
                         {name: value[task] for name, value in state.memory.items()})
            for task in range(query_images.shape[0])])


@hookimpl
def metactl_register_algorithms(registry: AlgorithmRegistry) -> None:
    registry.add(MetaNet)
