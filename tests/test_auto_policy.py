"""``adaptive_k: auto``: the calibration of stated draft confidences, the cost-aware cut of drafts, the
config value, and (on the real model) exact greedy output with drafts cut step by step."""

from __future__ import annotations

import pytest
import torch

from specplug.config import load_config
from specplug.hosting.auto import AutoDraftLength, Calibration, assumed_prior
from specplug.errors import ConfigError, SpecplugError
from specplug.metadata import Draft, DraftRequest
from specplug.proposers.base import check_drafts
from specplug.proposers.ngram import match_confidence


class Row:  # what the policy reads of a host's row
    def __init__(self, request_id):
        self.seq_id = request_id


def policy(costs_ms: dict[int, float], k: int = 8) -> AutoDraftLength:
    return AutoDraftLength(k, costs_ms, explore=0.0)


FLAT = {w: 10.0 for w in range(1, 10)}  # a GPU-like machine: verifying 9 tokens costs what 1 does
STEEP = {w: 10.0 * w for w in range(1, 10)}  # every verified position costs a full step


def test_calibration_learns_what_a_confidence_is_worth():
    calibration = Calibration()
    assert calibration.rate(0.95) == pytest.approx(0.95)  # nothing seen: the stated value
    for _ in range(200):
        calibration.observe([0.95, 0.95, 0.95], accepted=0)  # first token rejected, the rest never tried
    assert calibration.rate(0.95) < 0.05
    assert calibration.rate(0.35) == pytest.approx(0.35)  # other bins untouched
    for _ in range(200):
        calibration.observe([0.35, 0.35], accepted=2)
    assert calibration.rate(0.35) > 0.95


def test_confident_drafts_are_kept_where_verify_width_is_cheap_and_cut_where_it_is_not():
    drafts = [Draft([1, 2, 3, 4], confidence=[0.95] * 4), Draft([5, 6], confidence=[0.95] * 2)]
    rows = [Row("a"), Row("b")]
    assert policy(FLAT).trim(rows, drafts, 2, 1) == [4, 2]
    steep = policy(STEEP)
    assert steep.trim(rows, drafts, 2, 1) == [0, 0]  # 0.95 per token never pays a full step per token
    assert steep.confident and steep.plan(rows, 2, 1) == [8, 8]  # from now on: draft k, then cut


def test_what_was_accepted_decides_not_what_was_stated():
    cheap_second = {1: 10.0, 2: 12.0, 3: 30.0, 4: 40.0, 5: 50.0}
    auto = policy(cheap_second, k=4)
    rows, draft = [Row("a")], Draft([7, 8, 9, 10], confidence=[0.9] * 4)
    assert auto.trim(rows, [draft], 1, 1) == [1]  # one token for 20% more time: worth it at 0.9
    for _ in range(100):
        auto.observe(rows, [draft.cut(1)], [0], 1, 2, 0.012, 0.0)  # never accepted
    assert auto.trim(rows, [draft], 1, 1) == [0]


def test_drafts_without_confidence_are_left_to_plan_and_other_rows_set_the_floor():
    auto = policy(STEEP)
    plain = [Draft([1, 2, 3])]
    assert auto.trim([Row("a")], plain, 1, 1) == [3] and not auto.confident
    # another strategy's row already needs width 4: up to 3 tokens ride along for free
    assert auto.trim([Row("a")], [Draft([1, 2, 3, 4, 5], confidence=[0.9] * 5)], 2, 4) == [3]


def test_token_costs_share_what_one_token_count_measured_with_its_neighbours():
    from specplug.hosting.step_costs import TokenCosts

    costs = TokenCosts({1: 11.0, 64: 74.0})  # prior: 10 ms + 1 ms per token
    assert costs.seconds(16) == pytest.approx(0.026)
    costs.observe(16, 0.013)  # half the prior at 16 tokens
    costs.observe(48, 0.087)  # 1.5 times the prior at 48 (58 ms)
    assert costs.seconds(32) == pytest.approx(1.0 * 0.042)  # between them: the correction interpolated
    assert costs.seconds(64) == pytest.approx(0.087 + 16 * (0.087 - 0.013) / 32)  # past them: the measured line
    assert costs.seconds(8) == pytest.approx(0.5 * 0.018)  # below them: the nearest correction


# what auto had measured inside vLLM, 8 rows of open-ended text (AMD EPYC, 2026-12-02): the 9-token count,
# measured a few times, read cheaper than the 8 tokens of every plain step; each token costs about 3.4 ms
VLLM_STEP_MS = {8: 77.0, 9: 74.0, 16: 108.0, 24: 133.0, 32: 159.0}


def vllm_costs():
    from specplug.hosting.step_costs import TokenCosts

    costs = TokenCosts(assumed_prior(32))
    for tokens, ms in VLLM_STEP_MS.items():
        for _ in range(20 if tokens == 8 else 2):
            costs.observe(tokens, ms / 1000)
    return costs


def test_a_draft_token_is_never_free_where_its_count_measured_cheaper_than_the_one_below():
    costs = vllm_costs()
    assert costs.seconds(9) < costs.seconds(8)  # what was measured, noise and all
    assert costs.seconds(9, base=8) - costs.seconds(8) == pytest.approx(0.0034, abs=0.0006)  # the fitted slope
    assert costs.seconds(32) == pytest.approx(0.159) and costs.seconds(32, base=8) >= costs.seconds(32)  # never less


def verified_budgets(auto: AutoDraftLength, rows: list, batch_size: int, found: list[int] | None = None) -> list[int]:
    """What a host verifies of each row this step: the policy's budgets, the proposer's drafts (``found``:
    how many tokens it finds per row; default all it is asked for), then the policy's cut."""
    asked = auto.plan(rows, batch_size, 1)
    drafts = [Draft(list(range(1, 1 + min(b, f)))) for b, f in zip(asked, found or asked)]
    return auto.trim(rows, drafts, batch_size, 1)


def test_rows_that_rarely_keep_a_draft_draft_nothing_where_a_token_costs_a_twentieth_of_a_step():
    auto = AutoDraftLength(3, assumed_prior(32), explore=0.0, packed=True)
    auto.token_costs = vllm_costs()
    rows = [Row(i) for i in range(8)]
    for _ in range(30):  # each row keeps a draft token one time in six
        auto.observe(rows, [Draft([1])] * 8, [1, 0, 0, 0, 0, 0, 0, 0], 8, 2, 0.0, 0.0)
        rows = rows[1:] + rows[:1]
    assert verified_budgets(auto, rows, 8) == [0] * 8


def test_a_cheap_proposer_drafts_first_and_the_budget_goes_to_the_rows_that_found_a_draft():
    """ngram finds a draft for few rows of a batch; the verify budget must not be spent on the others."""
    cheap_to_12 = {1: 10.0, 12: 11.0, 13: 40.0, 64: 90.0}  # four draft tokens nearly free over 8 rows, then dear
    auto = AutoDraftLength(3, cheap_to_12, explore=0.0, packed=True)
    rows = [Row(i) for i in range(8)]
    auto.observe(rows, [Draft([1, 2, 3])] * 8, [3] * 8, 8, 4, 0.0, 0.0)  # every row as likely as the next
    assert auto.plan(rows, 8, 1) == [3] * 8 and auto.deferred  # its time is nothing: draft all, cut after
    budgets = verified_budgets(auto, rows, 8, found=[0] * 6 + [3, 3])
    assert budgets[:6] == [0] * 6 and sum(budgets) == 4  # all four cheap tokens, to the two rows with drafts


def test_a_dear_proposer_is_asked_only_for_what_will_be_verified():
    auto = AutoDraftLength(3, {1: 10.0, 12: 11.0, 13: 40.0, 64: 90.0}, explore=0.0, packed=True)
    rows = [Row(i) for i in range(8)]
    auto.drafted = auto.after_call = True
    auto.observe(rows, [Draft([1, 2, 3])] * 8, [3] * 8, 8, 4, 0.0, 0.005)  # half a step per call
    asked = auto.plan(rows, 8, 1)
    assert not auto.deferred and 0 < sum(asked) <= 4


def test_packed_hosts_give_each_row_its_own_budget():
    """Where the engine verifies each row's own tokens, the draft tokens go to the rows most likely to
    keep them, up to where one more costs more than it is expected to give."""
    cheap_to_16 = {1: 10.0, 16: 11.0, 17: 40.0, 64: 90.0}  # tokens are nearly free up to 16, then dear
    auto = AutoDraftLength(3, cheap_to_16, explore=0.0, packed=True)
    good, poor = Row("good"), Row("poor")
    for _ in range(30):
        auto.observe([good, poor], [Draft([1, 2, 3]), Draft([1, 2, 3])], [3, 0], 12, 4, 0.0, 0.0)
    rows = [good, poor] + [Row(f"other{i}") for i in range(10)]  # ten rows with the strategy-wide rate
    budgets = verified_budgets(auto, rows, 12)
    assert budgets[0] == 3 and budgets[1] == 0  # the reliable row drafts all it may, the other nothing
    assert sum(budgets) <= 16 - 12  # no token past the cheap 16
    assert auto.chosen[3] >= 1 and auto.chosen[0] >= 1


def test_a_row_cut_to_nothing_is_tried_again_once_its_early_misses_have_aged():
    """A grounded answer may start copying its document only later: its first rejected drafts must not
    keep its budget at 0 for the rest of the request while the other rows' drafts are accepted."""
    token_ms = {1: 9.0, 2: 10.0, 6: 14.0, 64: 72.0}  # each verified token costs a tenth of a step
    auto = AutoDraftLength(3, token_ms, explore=0.0, packed=True)
    late, steady = Row("late"), Row("steady")
    for _ in range(6):
        auto.observe([late, steady], [Draft([1, 2, 3]), Draft([1, 2, 3])], [0, 3], 2, 4, 0.0, 0.0)
    assert verified_budgets(auto, [late, steady], 2) == [0, 3]
    steps_cut = 0
    while verified_budgets(auto, [late, steady], 2)[0] == 0 and steps_cut < 50:
        auto.observe([late, steady], [Draft([]), Draft([1, 2, 3])], [0, 3], 2, 4, 0.0, 0.0)
        steps_cut += 1
    assert 0 < steps_cut < 50


def test_a_cut_draft_keeps_its_probabilities_and_confidences_in_step():
    probs = torch.full((3, 5), 0.2)
    draft = Draft([1, 2, 3], probs, [0.9, 0.8, 0.7]).cut(2)
    assert draft.token_ids == [1, 2] and draft.probs.shape == (2, 5) and list(draft.confidence) == [0.9, 0.8]
    assert Draft([1]).cut(3).token_ids == [1]


def test_a_confidence_out_of_range_names_the_proposer():
    proposer = type("Bad", (), {"name": "bad"})()
    with pytest.raises(SpecplugError, match="proposer 'bad' returned a draft confidence that is not 2 numbers"):
        check_drafts(proposer, [DraftRequest(0, [1], 1, 2)], [Draft([1, 2], confidence=[0.5, 1.5])], 10)


def test_config_takes_auto_and_refuses_other_words(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("adaptive_k: auto\n")
    assert load_config(str(path)).adaptive_k == "auto"
    path.write_text("adaptive_k: sometimes\n")
    with pytest.raises(ConfigError, match="adaptive_k must be one of false, true, auto \\(got 'sometimes'\\)"):
        load_config(str(path))
    path.write_text("serve: {strategies: {fast: {proposer: ngram, adaptive_k: 3}}}\n")
    with pytest.raises(ConfigError, match="serve.strategies.fast.adaptive_k must be one of false, true, auto"):
        load_config(str(path))


def one_step(auto: AutoDraftLength, row: Row, confidence: float, accepted_if_kept: bool, seconds_per_draft: float,
             propose_seconds: float) -> int:
    """One step of one row whose one-token draft is stated at ``confidence`` (a plain step costs 10 ms, each
    verified draft ``seconds_per_draft`` more); the budget ``plan`` gave."""
    budget = auto.plan([row], 1, 1)[0]
    drafted = Draft([7], confidence=[confidence]) if budget else Draft([])
    keep = auto.trim([row], [drafted], 1, 1)[0]
    auto.observe([row], [drafted.cut(keep)], [int(keep == 1 and accepted_if_kept)], 1, 1 + keep,
                 0.010 + seconds_per_draft * keep, propose_seconds if budget else 0.0)
    return budget


def run_confident(auto: AutoDraftLength, accepted_every: int, propose_seconds: float, steps: int = 60) -> list[int]:
    """``steps`` steps of one row whose one-token drafts (stated confidence 0.9) are accepted every
    ``accepted_every``-th time; the budgets ``plan`` gave."""
    row = Row("a")
    return [one_step(auto, row, 0.9, step % accepted_every == 0, 0.0024, propose_seconds) for step in range(steps)]


def test_a_confident_proposer_is_not_called_while_its_drafts_are_worth_less_than_its_own_time():
    """An EAGLE-3 head on open-ended text (AMD EPYC, docs/benchmarks.md): accepted a quarter of the time,
    a draft step of 0.12 decode steps, a 2-token verify of 1.24. Calling it each step and cutting
    afterwards ran at 0.78x plain; auto now stops calling it, and keeps calling a proposer that pays."""
    measured = {1: 10.0, 2: 12.4}
    losing = run_confident(AutoDraftLength(1, measured, explore=0.0), accepted_every=4, propose_seconds=0.0012)
    assert losing[-20:] == [0] * 20
    paying = run_confident(AutoDraftLength(1, measured, explore=0.0), accepted_every=1, propose_seconds=0.0012)
    assert paying == [1] * len(paying)
    exploring = run_confident(AutoDraftLength(1, measured, explore=0.2, seed=1), accepted_every=4,
                              propose_seconds=0.0012, steps=200)
    assert 0 < sum(exploring[-100:]) < 50, "closed, it still tries now and then"


def run_passages(auto: AutoDraftLength, passages: list[tuple[int, float]]) -> list[int]:
    """One row under a dear head (a draft step of 0.1 decode steps, a 2-token verify of 1.1), through
    ``passages`` of (steps, confidence): drafts stated at 0.9 are accepted, at 0.1 rejected. The budgets
    ``plan`` gave."""
    row = Row("a")
    return [one_step(auto, row, confidence, confidence > 0.5, 0.001, 0.001)
            for steps, confidence in passages for _ in range(steps)]


def test_a_run_of_unsure_drafts_does_not_close_a_head_that_pays_on_average():
    """A passage the head does not know (its drafts cut, each such call a loss) must not close a head that
    pays everywhere else: its value falls slowly and rises at once. A head that never pays still closes."""
    learning = [(4, 0.9), (1, 0.1)] * 8  # what each stated confidence is worth
    budgets = run_passages(AutoDraftLength(1, {1: 10.0, 2: 11.0}, explore=0.0), learning + [(12, 0.1), (20, 0.9)])
    assert budgets[sum(steps for steps, _ in learning):] == [1] * 32
    never = run_passages(AutoDraftLength(1, {1: 10.0, 2: 11.0}, explore=0.0), [(40, 0.1)])
    assert never[-20:] == [0] * 20


def test_a_cheap_proposer_is_called_every_step_however_little_its_drafts_are_worth():
    """ngram costs microseconds: not calling it would save nothing and miss the row that starts copying."""
    budgets = run_confident(AutoDraftLength(1, {1: 10.0, 2: 12.4}, explore=0.0), accepted_every=4,
                            propose_seconds=0.00001)
    assert budgets == [1] * len(budgets)


def test_ngram_drafts_are_weighed_by_what_their_match_length_turned_out_to_be_worth():
    """Open-ended text, greedy, Intel Xeon, 2026-12-07 (docs/benchmarks.md): a 1-gram match's first token
    was accepted 10-16% of the time, a 4-gram's 58-92%. One strategy-wide rate cannot tell them apart;
    the calibrated confidence of each match length can."""
    auto = AutoDraftLength(3, assumed_prior(32), explore=0.0, packed=True)
    auto.token_costs = vllm_costs()
    one, four = Draft([1, 2, 3], confidence=match_confidence(1, 3)), Draft([1, 2, 3], confidence=match_confidence(4, 3))
    rows = [Row(i) for i in range(8)]
    for _ in range(40):  # half the rows find 1-gram matches and lose them, half 4-gram ones and keep them
        auto.trim(rows, [one, four] * 4, 8, 1)
        auto.observe(rows, [one, four] * 4, [0, 3] * 4, 8, 4, 0.0, 0.0)
    fresh = [Row(f"new{i}") for i in range(8)]  # no history of their own: only the match length speaks
    budgets = auto.trim(fresh, [one, four] + [Draft([], confidence=[])] * 6, 8, 1)
    assert budgets[0] == 0 and budgets[1] == 3


def test_exploring_measures_plain_decoding_again_so_a_stale_figure_for_it_cannot_keep_a_wide_width():
    """32 rows sharing one width (the embedded engine): plain decoding measured in a slow spell, and
    width 4 since. Exploring only next to the chosen width would never correct the old figure."""
    prior = {1: 51.0, 32: 82.0, 64: 114.0, 96: 146.0, 128: 178.0}
    true_ms = {1: 100.0, 2: 200.0, 3: 215.0, 4: 225.0}  # at the acceptance below plain decoding pays most
    auto = AutoDraftLength(3, prior, explore=0.3, seed=0)
    rows, draft = [Row(i) for i in range(32)], Draft([1, 2, 3], confidence=[0.6] * 3)
    for _ in range(3):  # plain measured in a slow spell, at 300 ms, then width 4 since
        auto.observe(rows, [Draft([])] * 32, [0] * 32, 32, 1, 0.300, 0.0)
    for _ in range(3):
        auto.observe(rows, [draft] * 32, [3 if i % 3 == 0 else 0 for i in range(32)], 32, 4, 0.225, 0.0)
    widths = []
    for _ in range(300):
        auto.plan(rows, 32, 1)
        keep = auto.trim(rows, [draft] * 32, 32, 1)
        widths.append(1 + max(keep))
        accepted = [n if i % 3 == 0 else 0 for i, n in enumerate(keep)]  # a third of the rows keep all
        auto.observe(rows, [draft.cut(n) for n in keep], accepted, 32, widths[-1], true_ms[widths[-1]] / 1000, 0.0)
    assert widths[:10].count(4) >= 5  # the stale figure first keeps width 4
    assert widths[-50:].count(1) >= 35


@pytest.mark.parametrize("packed", [False, True])
def test_a_draft_that_only_just_beats_plain_decoding_is_not_verified(packed):
    """The best of several noisy estimates reads high: a draft is verified only where its expected gain
    clears the margin. A second token for half a step more: accepted with 0.55, 3% more tokens per
    second on paper (cut); with 0.65, 10% more (kept)."""
    half_a_step_more = {1: 10.0, 2: 15.0, 3: 20.0}
    for confidence, kept in ((0.55, 0), (0.65, 1)):
        auto = AutoDraftLength(1, half_a_step_more, explore=0.0, packed=packed)
        assert auto.trim([Row("a")], [Draft([7], confidence=[confidence])], 1, 1) == [kept]
    no_margin = AutoDraftLength(1, half_a_step_more, explore=0.0, packed=packed, margin=0.0)
    assert no_margin.trim([Row("a")], [Draft([7], confidence=[0.55])], 1, 1) == [1]


def run_deep(auto: AutoDraftLength, seconds_per_draft_token: float, steps: int = 80) -> list[int]:
    """``steps`` steps of one row whose first draft token (stated confidence 0.9) is always accepted and
    whose deeper ones (0.2) never are; the depth ``plan`` asked the proposer for each step."""
    rows, asked = [Row("a")], []
    for _ in range(steps):
        depth = auto.plan(rows, 1, 1)[0]
        asked.append(depth)
        draft = Draft([7, 8, 9][:depth], confidence=[0.9, 0.2, 0.2][:depth])
        keep = auto.trim(rows, [draft], 1, 1)[0]
        auto.observe(rows, [draft.cut(keep)], [min(keep, 1)], 1, 1 + keep, 0.010 + 0.0035 * keep,
                     seconds_per_draft_token * depth)
    return asked


def test_a_dear_confident_proposer_drafts_only_as_deep_as_the_steps_keep():
    """An EAGLE-3 head chains one draft step per token: drafting k = 3 to keep one cost it 3 steps' time
    (auto read 0.97-0.99x plain against fixed k = 1's 1.13x, Intel Xeon, 2026-12-07)."""
    costs = {1: 10.0, 2: 13.5, 3: 17.0, 4: 20.5}
    dear = run_deep(AutoDraftLength(3, costs, explore=0.0), seconds_per_draft_token=0.0004)
    assert 3 in dear[:5] and dear[-20:] == [1] * 20  # its full k until the steps show what they keep
    cheap = run_deep(AutoDraftLength(3, costs, explore=0.0), seconds_per_draft_token=0.000001)
    assert cheap[1:] == [3] * (len(cheap) - 1), "a cheap proposer's full draft costs nothing: trim alone decides"
    exploring = run_deep(AutoDraftLength(3, costs, explore=0.2, seed=1), seconds_per_draft_token=0.0004, steps=200)
    assert 1 in exploring[-50:] and 2 in exploring[-50:], "one deeper now and then, in case it pays"


def test_one_slow_step_does_not_decide_what_a_width_costs():
    """A width is measured only while it is chosen. Read as it came, one slow step at width 2 (the OS, a
    neighbour's burst) made an EAGLE-3 head's verify look 7x dearer than a decode step, and auto drafted
    nothing for the rest of the run (Intel Xeon, 2026-12-07)."""
    auto = AutoDraftLength(1, {1: 10.0, 2: 11.0}, explore=0.0)
    rows, draft, kept = [Row("a")], Draft([7], confidence=[0.9]), []
    for _ in range(3):  # the first steps decode plainly (the head has no features yet)
        auto.observe(rows, [Draft([])], [0], 1, 1, 0.010, 0.0)
    for step in range(40):
        auto.plan(rows, 1, 1)
        kept.append(auto.trim(rows, [draft], 1, 1)[0])
        seconds = 0.080 if step == 0 else 0.010 + 0.001 * kept[-1]
        auto.observe(rows, [draft.cut(kept[-1])], [kept[-1]], 1, 1 + kept[-1], seconds, 0.0005)
    assert kept == [1] * 40
    for _ in range(3):  # a width that is dearer for more than a step is dearer
        auto.observe(rows, [draft], [1], 1, 2, 0.080, 0.0005)
    assert auto.trim(rows, [draft], 1, 1) == [0]


def test_a_call_after_plain_steps_does_not_set_what_calling_costs():
    """The first call after plain steps (or after the prompt) catches up on every position since: an
    EAGLE-3 head feeds them all at once. Steady calls cost less, and they are what the choice to call
    the proposer must weigh."""
    auto = AutoDraftLength(1, {1: 10.0, 2: 11.0}, explore=0.0)
    rows, draft = [Row("a")], Draft([7], confidence=[0.9])
    for propose_seconds in (0.030, 0.001, 0.001, 0.001):  # the first: the prompt's catch-up
        assert auto.plan(rows, 1, 1) == [1]
        keep = auto.trim(rows, [draft], 1, 1)[0]
        auto.observe(rows, [draft.cut(keep)], [keep], 1, 1 + keep, 0.011, propose_seconds)
    assert auto.propose_seconds < 0.001
