"""Meta-Learner LSTM: with its gates pinned it is plain SGD; its meta-gradient is truncated."""

from __future__ import annotations

import math

import pytest
import torch
from testsupport import float64_task_batch, train_plainly
from torch import nn

from metactl.algorithm import ModelSpec, support_of
from metactl.engine.config import resolve_config
from metactl.errors import UsageError
from metactl_plugins.meta_lstm import MetaLearnerLSTM

SMALL = {"hidden": 4, "lstm_hidden": 3, "inner_epochs": 3, "inner_batch_size": 0}


def make_algorithm(**overrides):
    return MetaLearnerLSTM(resolve_config("meta-lstm", MetaLearnerLSTM.defaults, {},
                                          {**SMALL, **overrides}, {}))


def build(algorithm, seed=0):
    torch.manual_seed(seed)
    return algorithm.build_model(ModelSpec(1, 16, 16, way=3)).double()


def task_batch(tasks=2, way=3, shot=2, query=3, seed=0):
    return float64_task_batch(tasks, way, shot, query, side=16, seed=seed)


def pin_gates(model, lr):
    """Forget gate 1 and input gate lr whatever the inputs: c_t = c_{t-1} - lr * grad."""
    meta = model.meta_lstm
    with torch.no_grad():
        meta.forget_weight.zero_()
        meta.input_weight.zero_()
        meta.forget_bias.fill_(50.0)  # sigmoid(50) == 1.0 in float64
        meta.input_bias.fill_(math.log(lr / (1 - lr)))


def sgd_reference(model, batch, task, steps, lr):
    """The learner trained by torch.optim.SGD, batch norm in training mode (its running
    averages reset first, then collected as it trains)."""
    learner = build(make_algorithm()).learner
    learner.load_state_dict(model.learner.state_dict())
    for module in learner.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
    learner.train()
    return train_plainly(learner, batch.support_images[task], batch.support_labels[task], steps,
                         lr)


def test_pinned_gates_reproduce_plain_sgd():
    algorithm = make_algorithm()
    model = build(algorithm).train()
    pin_gates(model, lr=0.1)
    batch = task_batch()
    state = algorithm.adapt(model, support_of(batch))
    for task in range(batch.tasks):
        expected = sgd_reference(model, batch, task, steps=3, lr=0.1)
        for name, value in expected.named_parameters():
            assert torch.allclose(state.parameters[name][task], value, atol=1e-12), name
        for name, value in expected.named_buffers():
            assert torch.allclose(state.buffers[name][task].to(value.dtype), value,
                                  atol=1e-12), name


def test_meta_gradient_does_not_flow_through_the_learner_gradients():
    """With f = 1 and i = lr fixed, theta_T = theta_0 - lr * sum of constant gradients, so the
    gradient for the initialisation is the query-loss gradient at theta_T."""
    algorithm = make_algorithm()
    model = build(algorithm).train()
    pin_gates(model, lr=0.1)
    batch = task_batch()
    algorithm.meta_gradient(model, batch)
    expected = {name: 0 for name, _ in model.learner.named_parameters()}
    for task in range(batch.tasks):
        trained = sgd_reference(model, batch, task, steps=3, lr=0.1)
        trained.zero_grad()
        loss = nn.functional.cross_entropy(trained(batch.query_images[task]),
                                           batch.query_labels[task])
        loss.backward()
        for name, value in trained.named_parameters():
            expected[name] = expected[name] + value.grad / batch.tasks
    for name, value in model.learner.named_parameters():
        assert torch.allclose(value.grad, expected[name], atol=1e-12), name


def test_every_part_of_the_meta_learner_gets_a_gradient():
    algorithm = make_algorithm()
    model = build(algorithm).train()
    algorithm.meta_gradient(model, task_batch())
    for name, value in model.named_parameters():
        assert value.grad is not None and value.grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batched_and_looped_tasks_agree(mode):
    gradients = []
    for batch_tasks in (True, False):
        algorithm = make_algorithm(batch_tasks=batch_tasks)
        model = build(algorithm).train(mode == "train")
        with torch.enable_grad():
            result = algorithm.loss(model, task_batch())
        if mode == "train":
            result.loss.backward()
            gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        else:
            gradients.append(result.loss.detach().view(1))
    assert torch.allclose(gradients[0], gradients[1], atol=1e-12)


def scores_in_evaluation_mode(algorithm, batch):
    """A model in evaluation mode adapted to the batch's support sets: the model, the task
    state, every query's scores computed together, and the first query's computed alone."""
    model = build(algorithm).eval()
    with torch.enable_grad():
        state = algorithm.adapt(model, support_of(batch))
        together = algorithm.logits(model, state, batch.query_images)
        alone = algorithm.logits(model, state, batch.query_images[:, :1])
    return model, state, together, alone


def test_evaluation_is_not_transductive():
    """In evaluation mode the queries use the running averages of the support set: a query's
    scores do not depend on the other queries."""
    algorithm, batch = make_algorithm(), task_batch()
    model, state, together, alone = scores_in_evaluation_mode(algorithm, batch)
    assert torch.allclose(together[:, :1], alone, atol=1e-12)
    model.train()
    with torch.enable_grad():
        transductive = algorithm.logits(model, state, batch.query_images)
    assert not torch.allclose(together, transductive)


def test_batch_statistics_at_evaluation_are_an_option():
    """``eval_batch_norm=batch`` scores the queries of a model in evaluation mode exactly as
    the batch statistics of training mode do, and leaves adaptation unchanged."""
    algorithm, batch = make_algorithm(eval_batch_norm="batch"), task_batch()
    model, state, together, alone = scores_in_evaluation_mode(algorithm, batch)
    model.train()
    with torch.enable_grad():
        transductive = algorithm.logits(model, state, batch.query_images)
    assert torch.allclose(together, transductive, atol=1e-12)
    assert not torch.allclose(together[:, :1], alone)
    running = make_algorithm()
    with torch.enable_grad():
        adapted = running.adapt(build(running).eval(), support_of(batch))
    for name, value in adapted.parameters.items():
        assert torch.allclose(value, state.parameters[name], atol=1e-12)


def test_unknown_evaluation_batch_norm_is_refused():
    with pytest.raises(UsageError, match="eval_batch_norm 'query'") as refused:
        make_algorithm(eval_batch_norm="query")
    assert refused.value.hint == "use one of running, batch"


def test_predict_returns_probabilities():
    algorithm = make_algorithm()
    model = build(algorithm).eval()
    batch = task_batch()
    with torch.enable_grad():
        probabilities = algorithm.predict(model, support_of(batch), batch.query_images)
    assert probabilities.shape == (2, 9, 3)
    assert torch.allclose(probabilities.sum(-1), torch.ones(2, 9, dtype=torch.float64))


def test_defaults_follow_the_authors_code():
    one = resolve_config("meta-lstm", MetaLearnerLSTM.defaults, {}, {"way": 5, "shot": 1}, {})
    assert (one["inner_epochs"], one["inner_batch_size"], one["episodes"]) == (15, 5, 50_000)
    assert (one["optimizer"], one["lr"], one["grad_clip"], one["meta_batch"]) == (
        "adam", 1e-3, 0.25, 1)
    assert (one["hidden"], one["lstm_hidden"]) == (32, 20)
    five = resolve_config("meta-lstm", MetaLearnerLSTM.defaults, {}, {"way": 5, "shot": 5}, {})
    assert five["inner_epochs"] == 5
    twenty = resolve_config("meta-lstm", MetaLearnerLSTM.defaults, {}, {"way": 20, "shot": 1},
                            {})
    assert (twenty["inner_epochs"], twenty["inner_batch_size"], twenty["episodes"]) == (
        20, 20, 40_000)
