"""Sync mode: one body step on the concatenation of every client's batch, per step."""

from __future__ import annotations

import copy

import torch

from festa.client.body_client import RemoteBodyLink
from festa.shared.model.split import split_train_step

from .conftest import make_batch, make_head_tail, mse_loss, run_concurrently, token

NODES = ["site-a", "site-b", "site-c"]
BATCH_SIZES = [2, 3, 4]
STEPS = 2
LR = 1e-3


def test_three_concurrent_clients_equal_one_local_step_on_the_concatenated_batch(
    start_service, body, config
):
    service, target = start_service(lr=LR)
    service.open_round(5, {n: "cls" for n in NODES}, train_body=True, step_deadline_s=30)
    batches = [
        [make_batch(config, size, seed=10 * i + s) for s in range(STEPS)]
        for i, size in enumerate(BATCH_SIZES)
    ]
    models = [make_head_tail(config, seed=i) for i in range(len(NODES))]
    reference_models = copy.deepcopy(models)

    def client(i: int):
        head, tail = models[i]
        losses, grads = [], []
        with RemoteBodyLink(target, token(5, NODES[i])) as link:
            for s in range(STEPS):
                head.zero_grad(), tail.zero_grad()
                result = split_train_step(head, tail, mse_loss, batches[i][s], link)
                losses.append(result.loss)
                grads.append([p.grad.clone() for p in [*head.parameters(), *tail.parameters()]])
        return losses, grads

    remote = run_concurrently(*[lambda i=i: client(i) for i in range(len(NODES))])
    report = service.close_round()

    # The same computation in one process: one forward of the concatenation, summed losses.
    local_body = copy.deepcopy(body)
    optimizer = torch.optim.AdamW(local_body.parameters(), lr=LR, weight_decay=0.01)
    for s in range(STEPS):
        optimizer.zero_grad()
        for head, tail in reference_models:
            head.zero_grad(), tail.zero_grad()
        tokens = [head(batches[i][s]["image"]) for i, (head, _) in enumerate(reference_models)]
        outputs = local_body(torch.cat(tokens)).split(BATCH_SIZES)
        losses = [
            mse_loss(tail(out), batches[i][s])
            for i, ((_, tail), out) in enumerate(zip(reference_models, outputs, strict=True))
        ]
        sum(losses).backward()
        optimizer.step()
        for i, (head, tail) in enumerate(reference_models):
            remote_losses, remote_grads = remote[i]
            want = float(losses[i].detach())
            assert abs(remote_losses[s] - want) <= 1e-5 * abs(want)
            for got, p in zip(
                remote_grads[s], [*head.parameters(), *tail.parameters()], strict=True
            ):
                assert torch.allclose(got, p.grad, rtol=1e-5, atol=1e-7)

    moved = service.engine.body.norm.weight.detach().cpu()
    assert not torch.equal(moved, body.norm.weight.detach())  # the body did train
    for got, want in zip(service.engine.body.parameters(), local_body.parameters(), strict=True):
        assert torch.allclose(got.detach().cpu(), want.detach(), rtol=1e-5, atol=1e-7)
    assert report.steps == STEPS and report.dropped == {}
    assert report.tokens_processed == STEPS * sum(BATCH_SIZES) * config.num_tokens
    assert all(report.bytes_in[n] > 0 and report.bytes_out[n] > 0 for n in NODES)


def test_clients_with_different_token_counts_share_one_body_step(start_service, body):
    """N differs (e.g. a task with a smaller input): one forward per N, one optimizer step."""
    service, target = start_service(lr=LR)
    service.open_round(6, {"a": "cls", "b": "seg"}, train_body=True, step_deadline_s=30)
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "a": (torch.randn(2, 16, 32, generator=gen), torch.randn(2, 16, 32, generator=gen)),
        "b": (torch.randn(3, 9, 32, generator=gen), torch.randn(3, 9, 32, generator=gen)),
    }

    def client(node: str, task: str):
        tokens, grad_output = inputs[node]
        with RemoteBodyLink(target, token(6, node, task)) as link:
            return link.forward(tokens), link.backward(grad_output)

    (out_a, grad_a), (out_b, grad_b) = run_concurrently(
        lambda: client("a", "cls"), lambda: client("b", "seg")
    )
    assert service.close_round().steps == 1

    local_body = copy.deepcopy(body)
    optimizer = torch.optim.AdamW(local_body.parameters(), lr=LR, weight_decay=0.01)
    leaves = {n: t.clone().requires_grad_(True) for n, (t, _) in inputs.items()}
    outputs = {n: local_body(leaf) for n, leaf in leaves.items()}
    torch.autograd.backward([outputs["a"], outputs["b"]], [inputs["a"][1], inputs["b"][1]])
    optimizer.step()
    for got, want in [(out_a, outputs["a"]), (out_b, outputs["b"])]:
        assert torch.allclose(got, want.detach(), rtol=1e-5, atol=1e-6)
    for got, want in [(grad_a, leaves["a"].grad), (grad_b, leaves["b"].grad)]:
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    for got, want in zip(service.engine.body.parameters(), local_body.parameters(), strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
