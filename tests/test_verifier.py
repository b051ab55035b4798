"""Behaviour of the verifiers on small synthetic vocabularies (no model).

Statistical tests put many independent trials in the batch dimension of one VerifyInput, draw with a
fixed-seed generator (so every p-value is deterministic) and reject at ALPHA. The negative controls run
the same test on naive acceptance rules to show it has the power to catch a wrong rule.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import binomtest, chisquare
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from specplug.errors import ConfigError
from specplug.metadata import SamplingParams, VerifyInput, VerifyOutput
from specplug.sampling import filter_logits, sample, target_probs
from specplug.verifiers import GreedyVerifier, RejectionSampler

V = 8
N = 40_000
ALPHA = 1e-3

PARAMS = {
    "plain": SamplingParams(temperature=1.0),
    "temperature": SamplingParams(temperature=0.6),
    "top_k": SamplingParams(temperature=1.0, top_k=3),
    "top_p": SamplingParams(temperature=1.0, top_p=0.7),
    "combined": SamplingParams(temperature=1.4, top_k=5, top_p=0.8),
}
GREEDY = SamplingParams(temperature=0.0)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _logits(seed: int, positions: int, vocab: int = V) -> torch.Tensor:
    """[positions, vocab] target logits; each position is independent of the others."""
    return torch.randn(positions, vocab, generator=_gen(seed)) * 1.5


def _probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """[T, V] logits -> [T, V] filtered target distribution."""
    return target_probs(logits[None], [params])[0]


def _draw(q: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n independent drafts from q [K, V]: [n, K]."""
    return torch.multinomial(q, n, replacement=True, generator=_gen(seed)).T.contiguous()


def _check_layout(out: VerifyOutput, drafts: torch.Tensor, num_draft: torch.Tensor) -> None:
    """Accepted prefix of the drafts, then exactly one more token, then -1 padding."""
    tokens, accepted = out.output_token_ids, out.num_accepted
    positions = torch.arange(tokens.shape[1])[None]
    assert bool(((accepted >= 0) & (accepted <= num_draft)).all())
    assert torch.equal(tokens >= 0, positions <= accepted[:, None])
    prefix = positions[:, : drafts.shape[1]] < accepted[:, None]
    assert torch.equal(tokens[:, : drafts.shape[1]][prefix], drafts[prefix])


def _verify(logits, drafts, draft_probs, sampling, seed, num_draft=None, verifier=None):
    """Verify n rows (one per draft row) that share the target logits [K + 1, V] (or carry their own)."""
    n, k = drafts.shape
    num_draft = torch.full((n,), k) if num_draft is None else num_draft
    if not isinstance(sampling, list):
        sampling = [sampling] * n
    batch = VerifyInput(
        target_logits=logits.expand(n, -1, -1) if logits.dim() == 2 else logits,
        draft_token_ids=drafts,
        num_draft=num_draft,
        draft_probs=draft_probs,
        sampling=sampling,
        generator=_gen(seed),
    )
    out = (verifier or RejectionSampler()).verify(batch)
    _check_layout(out, drafts, num_draft)
    return out


def _pvalue(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square p-value for `tokens` [M] being draws from `probs` [V]; bins expected < 5 are pooled."""
    counts = torch.bincount(tokens, minlength=probs.shape[0])
    outside = counts[probs == 0].sum().item()
    if outside:
        return 0.0  # a token the target can never produce
    expected = probs.double() / probs.double().sum() * counts.sum()
    small = (expected < 5) & (probs > 0)
    big = (expected >= 5) & (probs > 0)
    obs = torch.cat([counts[big], counts[small].sum()[None]]).double()
    exp = torch.cat([expected[big], expected[small].sum()[None]])
    keep = exp > 0
    return float(chisquare(obs[keep].numpy(), exp[keep].numpy()).pvalue)


def assert_follows(tokens: torch.Tensor, probs: torch.Tensor) -> None:
    assert len(tokens) >= 2000, f"only {len(tokens)} samples: the test would have no power"
    pvalue = _pvalue(tokens, probs)
    counts = torch.bincount(tokens, minlength=probs.shape[0])
    assert pvalue > ALPHA, f"p={pvalue:.2e} counts={counts.tolist()} expected∝{probs.tolist()}"


def _sampled_drafts(k: int, params: SamplingParams, n: int = N, seed: int = 1, near=None):
    """Drafts drawn from q (other logits, same filters; half-mixed with `near` [K, V] if given).

    Returns (drafts [n, K], q expanded to [n, K, V]).
    """
    q = _probs(_logits(seed + 100, k), params)
    q = q if near is None else 0.5 * near + 0.5 * q
    return _draw(q, n, seed), q.expand(n, -1, -1)


# ---------------------------------------------------------------- losslessness, k = 1


@pytest.mark.parametrize("name", PARAMS)
def test_first_token_is_target_distributed_with_draft_probs(name):
    params = PARAMS[name]
    logits = _logits(0, 2)
    drafts, q = _sampled_drafts(1, params)
    out = _verify(logits, drafts, q, params, seed=2)
    p = _probs(logits, params)
    assert_follows(out.output_token_ids[:, 0], p[0])
    accept_rate = torch.minimum(p[0], q[0, 0]).sum().item()  # P(accept) = sum_x min(p(x), q(x))
    assert binomtest(int(out.num_accepted.sum()), N, accept_rate).pvalue > ALPHA


@pytest.mark.parametrize("rank", [0, 2, V - 1])
@pytest.mark.parametrize("name", PARAMS)
def test_first_token_is_target_distributed_with_deterministic_draft(name, rank):
    params = PARAMS[name]
    logits = _logits(3, 2)
    p = _probs(logits, params)
    token = int(p[0].argsort(descending=True)[rank])
    if rank == V - 1 and (params.top_k or params.top_p < 1):
        assert p[0, token] == 0  # the filters remove the least likely token: a draft p cannot produce
    drafts = torch.full((N, 1), token)
    out = _verify(logits, drafts, None, params, seed=4)
    assert_follows(out.output_token_ids[:, 0], p[0])
    assert binomtest(int(out.num_accepted.sum()), N, p[0, token].item()).pvalue > ALPHA


# ---------------------------------------------------------------- losslessness, k = 2 and 3


@pytest.mark.parametrize("deterministic", [False, True], ids=["draft_probs", "one_hot"])
@pytest.mark.parametrize("name", ["plain", "combined"])
def test_later_tokens_are_target_distributed_given_acceptance(name, deterministic):
    """Emitted token j (when the row emits it) follows p_j, also conditioned on the first token."""
    params, n = PARAMS[name], 60_000
    k = 2 if deterministic else 3  # one-hot drafts are accepted less often: keep enough rows at k
    logits = _logits(5, k + 1)
    p = _probs(logits, params)
    drafts, q = _sampled_drafts(k, params, n, seed=6, near=p[:k])  # q near p: rows get far enough
    out = _verify(logits, drafts, None if deterministic else q, params, seed=7)
    tokens = out.output_token_ids
    for j in range(k + 1):
        assert_follows(tokens[out.num_accepted >= j, j], p[j])
    emits_two = out.num_accepted >= 1
    commonest = int(torch.bincount(tokens[emits_two, 0]).argmax())
    assert_follows(tokens[emits_two & (tokens[:, 0] == commonest), 1], p[1])


@pytest.mark.parametrize("deterministic", [False, True], ids=["draft_probs", "one_hot"])
def test_bonus_token_after_all_accepted(deterministic):
    """Rows with 1 or 2 drafts in one batch: all accepted -> num_draft + 1 tokens, the last ~ p_num_draft."""
    params, k, n = PARAMS["combined"], 2, 60_000
    logits = _logits(8, k + 1)
    p = _probs(logits, params)
    num_draft = torch.arange(n) % 2 + 1
    valid = torch.arange(k)[None] < num_draft[:, None]
    drafts, q = _sampled_drafts(k, params, n, seed=10, near=p[:k])
    if deterministic:
        drafts, q = p[:k].argmax(-1).expand(n, -1), None
    drafts = drafts.masked_fill(~valid, 0)
    draft_probs = None if deterministic else q * valid[..., None]
    out = _verify(logits, drafts, draft_probs, params, seed=11, num_draft=num_draft)
    for m in (1, 2):
        full = (num_draft == m) & (out.num_accepted == m)
        assert bool(((out.output_token_ids[full] >= 0).sum(-1) == m + 1).all())
        assert_follows(out.output_token_ids[full, m], p[m])


# ---------------------------------------------------------------- negative controls


def _naive_first_tokens(rule, p, q, drafts, seed):
    """First emitted token under a wrong acceptance rule (k = 1), vectorised over rows."""
    x = drafts[:, 0]
    g = _gen(seed)
    if rule == "accept_all":
        return x
    q_x = torch.ones(x.shape) if q is None else q[x]
    accept = torch.rand(x.shape, generator=g) * q_x < p[x]
    return torch.where(accept, x, sample(p.expand(len(x), -1), g))  # recovered from p, not the residual


@pytest.mark.parametrize(
    "rule,deterministic",
    [("accept_all", False), ("recover_from_target", False), ("recover_from_target", True)],
)
def test_chi_square_rejects_naive_rules(rule, deterministic):
    params = PARAMS["plain"]
    logits = _logits(0, 2)
    p = _probs(logits, params)[0]
    drafts, q = _sampled_drafts(1, params)
    if deterministic:
        drafts = torch.full((N, 1), int(p.argsort()[V // 2]))
    naive = _naive_first_tokens(rule, p, None if deterministic else q[0, 0], drafts, seed=2)
    assert _pvalue(naive, p) < ALPHA


# ---------------------------------------------------------------- greedy


def _greedy_reference(logits, drafts, num_draft):
    """Plain-python greedy verification: (tokens [B, K + 1] with -1 padding, num_accepted [B])."""
    rows, accepted = [], []
    for b in range(len(drafts)):
        argmax = logits[b].argmax(-1).tolist()
        j = 0
        while j < int(num_draft[b]) and int(drafts[b, j]) == argmax[j]:
            j += 1
        emitted = drafts[b, :j].tolist() + [argmax[j]]
        rows.append(emitted + [-1] * (logits.shape[1] - len(emitted)))
        accepted.append(j)
    return torch.tensor(rows), torch.tensor(accepted)


def _assert_greedy(out, logits, drafts, num_draft, rows=slice(None)):
    tokens, accepted = _greedy_reference(logits[rows], drafts[rows], num_draft[rows])
    assert torch.equal(out.output_token_ids[rows], tokens)
    assert torch.equal(out.num_accepted[rows], accepted)


def test_greedy_explicit_rows():
    logits = torch.full((3, 3, 4), -1.0)
    logits[:, 0, 2] = logits[:, 1, 0] = logits[:, 2, 3] = 1.0  # argmax per position: 2, 0, 3
    drafts = torch.tensor([[2, 0], [2, 0], [1, 0]])
    num_draft = torch.tensor([2, 1, 2])  # row 1: its padded draft (0) equals the argmax but is not a draft
    for verifier in (RejectionSampler(), GreedyVerifier()):
        out = _verify(logits, drafts, None, GREEDY, seed=0, num_draft=num_draft, verifier=verifier)
        assert out.output_token_ids.tolist() == [[2, 0, 3], [2, 0, -1], [2, -1, -1]]
        assert out.num_accepted.tolist() == [2, 1, 0]


def _random_greedy_case(n, k, seed):
    g = _gen(seed)
    logits = torch.randn(n, k + 1, 6, generator=g)
    num_draft = torch.randint(0, k + 1, (n,), generator=g)
    noise = torch.randint(0, 6, (n, k), generator=g)
    drafts = torch.where(torch.rand(n, k, generator=g) < 0.25, noise, logits[:, :k].argmax(-1))
    return logits, drafts.masked_fill(torch.arange(k)[None] >= num_draft[:, None], 0), num_draft


@pytest.mark.parametrize("verifier", [RejectionSampler(), GreedyVerifier()], ids=["rejection", "greedy"])
def test_greedy_matches_reference_with_varied_num_draft(verifier):
    logits, drafts, num_draft = _random_greedy_case(500, 4, seed=12)
    out = _verify(logits, drafts, None, GREEDY, seed=0, num_draft=num_draft, verifier=verifier)
    _assert_greedy(out, logits, drafts, num_draft)
    assert len(set(out.num_accepted.tolist())) == 5  # every outcome 0..k occurs


def test_mixed_batch_routes_each_row():
    """Interleaved greedy / two kinds of sampled rows: greedy rows exact, sampled rows ~ their own p."""
    kinds = [GREEDY, PARAMS["plain"], PARAMS["combined"]]
    n = 3 * 20_000
    logits, drafts, num_draft = _random_greedy_case(n, 1, seed=13)
    logits[1::3] = logits[2::3] = _logits(14, 2, vocab=6)
    sampling = [kinds[i % 3] for i in range(n)]
    out = _verify(logits, drafts, None, sampling, seed=15, num_draft=num_draft)
    _assert_greedy(out, logits, drafts, num_draft, rows=slice(0, None, 3))
    for i in (1, 2):
        assert_follows(out.output_token_ids[i::3, 0], _probs(logits[i], kinds[i])[0])


def test_greedy_verifier_refuses_sampled_rows():
    logits, drafts, num_draft = _random_greedy_case(2, 2, seed=16)
    batch = VerifyInput(logits, drafts, num_draft, None, [GREEDY, PARAMS["plain"]], _gen(0))
    with pytest.raises(ConfigError):
        GreedyVerifier().verify(batch)


# ---------------------------------------------------------------- filters against transformers


def _hf_filter(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """HF's warpers in generate's order (temperature, top-k, top-p) on one row's [T, V] logits."""
    scores = TemperatureLogitsWarper(float(params.temperature))(None, logits.clone())
    if params.top_k > 0:
        scores = TopKLogitsWarper(params.top_k)(None, scores)
    if params.top_p < 1.0:
        scores = TopPLogitsWarper(params.top_p)(None, scores)
    return scores


def _assert_matches_hf(logits: torch.Tensor, sampling: list[SamplingParams]) -> None:
    ours = filter_logits(logits, sampling)
    for b, params in enumerate(sampling):
        theirs = _hf_filter(logits[b], params)
        assert torch.equal(ours[b].isinf(), theirs.isinf()), f"row {b} {params}"
        finite = theirs.isfinite()
        torch.testing.assert_close(ours[b][finite], theirs[finite], rtol=1e-6, atol=0)


def test_filter_logits_matches_transformers():
    sampling = [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7, top_k=3),
        SamplingParams(temperature=1.5, top_p=0.8),
        SamplingParams(temperature=0.5, top_k=4, top_p=0.9),
        SamplingParams(temperature=2.0, top_k=20, top_p=0.5),
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=1.3, top_p=0.05),
        SamplingParams(temperature=0.9, top_k=2, top_p=0.3),
    ]
    logits = torch.round(torch.randn(len(sampling), 5, V, generator=_gen(17)) * 4) / 2  # with ties
    _assert_matches_hf(logits, sampling)


@pytest.mark.parametrize("top_p", [0.8, 0.9])
def test_filter_logits_top_p_boundary_matches_transformers(top_p):
    """Tokens whose cumulative probability sits within float32 rounding of 1 - top_p."""
    jitter = (torch.rand(4000, generator=_gen(18)) - 0.5) * 2e-6
    base = torch.tensor([1 - top_p, top_p]).log()
    logits = torch.stack([base[0] + jitter, base[1].expand(4000)], dim=-1)[:, None, :]
    _assert_matches_hf(logits, [SamplingParams(temperature=1.0, top_p=top_p)] * len(logits))
