import torch

from thrifty.train.config import ModelConfig
from thrifty.train.model import GPT, VOCAB_SIZE


def test_forward_shapes_and_initial_loss():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16))
    x, y = torch.randint(0, VOCAB_SIZE, (2, 3, 16))
    logits, loss = model(x, y)
    assert logits.shape == (3, 16, VOCAB_SIZE)
    # An untrained model is close to uniform over 256 bytes: loss ~ ln(256) = 5.55.
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.2


def test_weights_are_tied():
    model = GPT(ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=4))
    assert model.lm_head.weight is model.tok_emb.weight
    assert model.num_params(non_embedding=False) == sum(p.numel() for p in model.parameters())


def test_flops_per_token_formula():
    cfg = ModelConfig(n_layer=4, n_head=4, n_embd=128, block_size=128)
    model = GPT(cfg)
    n = model.num_params()  # excludes position embeddings
    assert n == model.num_params(non_embedding=False) - 128 * 128
    assert model.flops_per_token() == 6 * n + 12 * 4 * 4 * 32 * 128


def test_causality():
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)).eval()
    x = torch.randint(0, VOCAB_SIZE, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % VOCAB_SIZE
    assert torch.allclose(model(x)[0, :10], model(y)[0, :10], atol=1e-6)


def test_generate_is_reproducible_and_greedy_is_deterministic():
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8)).eval()
    start = torch.tensor([[1, 2, 3]])
    a = model.generate(start, 20, generator=torch.Generator().manual_seed(1))
    b = model.generate(start, 20, generator=torch.Generator().manual_seed(1))
    assert a.shape == (1, 23) and torch.equal(a, b)
    assert torch.equal(model.generate(start, 5, temperature=0), model.generate(start, 5, temperature=0))
