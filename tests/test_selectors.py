import random
import zlib

import numpy as np
import pytest
import torch

from igds.selectors import ifd as ifd_module
from igds.selectors import (SELECTORS, SelectionContext, Selector, answer_only, compression_ratio, get_selector,
                            ifd_scores, longest_scores, loss_scores, random_scores, register, run_selector,
                            zip_order, zip_scores, zip_stage_sizes)
from igds.selectors.zip import _Stream
from igds.data import Example, tokenize_example
from igds.selection import select_indices, table_meta


def _ex(i, prompt, response):
    return Example(id=f"e{i}", messages=[{"role": "user", "content": prompt}], response=response, record={},
                   dialect="fields", source="t", line=i)


POOL = [_ex(0, "Q: short", "A"), _ex(1, "A much longer prompt " * 6, "and a longer response " * 3),
        _ex(2, "mid prompt here", "twelve chars"), _ex(3, "x", "y" * 40), _ex(4, "what?", "it is 42")]


def _ce(lm, ids, lo):
    """Direct, unbatched mean CE of tokens ids[lo+1:] predicted from positions lo.. (no padding anywhere)."""
    t = torch.tensor([ids])
    with torch.no_grad():
        logits = lm.model(input_ids=t).logits[0]
    return torch.nn.functional.cross_entropy(logits[lo:len(ids) - 1], t[0, lo + 1:]).item()


def test_loss_scores_match_unbatched(tiny_lm):
    table = loss_scores(tiny_lm, POOL, max_batch=8, progress=False)
    want = []
    for ex in POOL:
        t = tokenize_example(tiny_lm.tokenizer, ex)
        want.append(_ce(tiny_lm, t.ids, t.prompt_len - 1))
    np.testing.assert_allclose(table.column("score").to_numpy(), want, rtol=1e-4)
    assert table.column("id").to_pylist() == [e.id for e in POOL]
    assert table.column("index").to_pylist() == list(range(len(POOL)))
    n_resp = [len(tiny_lm.tokenizer(e.response + "<|im_end|>", add_special_tokens=False)["input_ids"]) for e in POOL]
    assert table.column("n_tokens").to_pylist() == n_resp
    low = loss_scores(tiny_lm, POOL, keep="low", progress=False)
    assert select_indices(low, budget=5) == select_indices(table, budget=5)[::-1]
    assert table_meta(low)["keep"] == "low"
    with pytest.raises(ValueError, match="keep"):
        loss_scores(tiny_lm, POOL, keep="middle")


def test_ifd_matches_unbatched(tiny_lm):
    table = ifd_scores(tiny_lm, POOL, max_batch=8, drop_above=None, progress=False)
    tok = tiny_lm.tokenizer
    for i, ex in enumerate(POOL):
        t = tokenize_example(tok, ex)
        cond = _ce(tiny_lm, t.ids, t.prompt_len - 1)
        alone_ids = tok(ex.response + tok.eos_token, add_special_tokens=False)["input_ids"]
        assert answer_only(tok, ex).ids == alone_ids  # this tokenizer adds no BOS
        alone = _ce(tiny_lm, alone_ids, 0)  # the first answer token has no context
        assert table.column("loss_cond")[i].as_py() == pytest.approx(cond, rel=1e-4)
        assert table.column("loss_uncond")[i].as_py() == pytest.approx(alone, rel=1e-4)
        assert table.column("score")[i].as_py() == pytest.approx(cond / alone, rel=1e-4)


def test_ifd_above_one_ranked_last(tiny_lm, monkeypatch):
    cond = np.array([0.5, 3.0, 0.9, 2.0, np.nan])
    alone = np.array([1.0, 2.0, 1.0, 1.0, 1.0])  # IFD 0.5, 1.5, 0.9, 2.0, nan
    calls = iter([cond, alone])
    monkeypatch.setattr(ifd_module, "token_losses", lambda *a, **k: next(calls))
    table = ifd_scores(tiny_lm, POOL, progress=False)
    # kept (IFD <= 1) highest first, then dropped least-bad first, NaN last
    assert select_indices(table, budget=5) == [2, 0, 1, 3, 4]
    assert table_meta(table)["n_dropped"] == 2


def test_random_scores_deterministic():
    a, b, c = random_scores(POOL, seed=1), random_scores(POOL, seed=1), random_scores(POOL, seed=2)
    assert a.column("score").to_pylist() == b.column("score").to_pylist()
    assert a.column("score").to_pylist() != c.column("score").to_pylist()
    assert random_scores(7, seed=0).num_rows == 7
    assert a.column("id").to_pylist() == [e.id for e in POOL]


def test_longest_one_definition(tiny_lm):
    """Tokens when the context has a model (its tokenizer), characters otherwise; every entrance agrees."""
    tok = tiny_lm.tokenizer
    t = run_selector("longest", POOL, SelectionContext(model=tiny_lm))
    want = [len(tok(e.response, add_special_tokens=False)["input_ids"]) for e in POOL]
    assert t.column("score").to_pylist() == [float(w) for w in want] and t.column("n_tokens").to_pylist() == want
    assert select_indices(t, budget=3) == [1, 3, 2] and table_meta(t)["unit"] == "tokens"
    assert t.equals(longest_scores(POOL, tok))
    c = run_selector("longest", POOL, SelectionContext())
    assert c.column("score").to_pylist() == [float(len(e.response)) for e in POOL]
    assert table_meta(c)["unit"] == "chars" and c.equals(longest_scores(POOL))


# ---------------------------------------------------------------- ZIP
def _words(rng, n):
    vocab = [f"{a}{b}{c}" for a in "bcdfgklmnprstvz" for b in "aeiou" for c in "bdgklmnprstx"]
    return " ".join(rng.choice(vocab) for _ in range(n))


def test_stream_equals_one_shot_compression():
    rng = random.Random(0)
    texts = [(_words(rng, 30) + "\n").encode() for _ in range(20)]
    s = _Stream()
    for t in texts[:15]:
        s.add(t)
    head = b"".join(texts[:15])
    for x in texts[15:]:
        assert s.ratio_with(x) == len(head + x) / len(zlib.compress(head + x, 9))
    assert compression_ratio(head) == len(head) / len(zlib.compress(head, 9))


def _naive_zip(texts, k1, k2, k3):
    """The same algorithm with every ratio from a fresh zlib.compress of the concatenation."""
    data = [t.encode() + b"\n" for t in texts]
    ratio = lambda b: len(b) / len(zlib.compress(b, 9))  # noqa: E731
    state = [ratio(x) for x in data]
    order, left = [], set(range(len(data)))
    while left:
        c1 = sorted(left, key=lambda i: (state[i], i))[:k1]
        head = b"".join(data[j] for j in order)
        for i in c1:
            state[i] = ratio(head + data[i])
        c2 = sorted(c1, key=lambda i: (state[i], i))[:k2]
        local = b""
        for _ in range(min(k3, len(c2))):
            best = min(c2, key=lambda i: (ratio(local + data[i]), i))
            c2.remove(best)
            local += data[best]
            order.append(best)
            left.discard(best)
    return order


def test_zip_matches_naive_reference():
    rng = random.Random(1)
    texts = [_words(rng, rng.randint(5, 40)) for _ in range(24)]
    texts += [texts[3]] * 3 + [texts[5] + " " + texts[6]]
    assert zip_order(texts, k1=10, k2=6, k3=3, scale=False) == _naive_zip(texts, 10, 6, 3)


DIVERSE = [
    "Photosynthesis turns sunlight, water and carbon dioxide into glucose and oxygen inside green leaves.",
    "The treaty of Westphalia in 1648 ended decades of war and reshaped the map of central Europe.",
    "To reverse a linked list, walk it once while pointing each node back at its predecessor.",
    "Marathon runners often eat pasta the night before a race to top up their glycogen stores.",
    "Jupiter's Great Red Spot is a storm larger than Earth that has raged for centuries.",
    "A sonnet has fourteen lines, usually in iambic pentameter, with a turn near the end.",
    "Compound interest grows savings because each year's gain is added to the principal.",
    "Octopuses can change colour in milliseconds using pigment cells called chromatophores.",
    "Sourdough bread rises thanks to wild yeast and lactic acid bacteria living in the starter.",
    "Volcanic islands such as Hawaii form where a plate drifts over a hot mantle plume.",
    "In chess, castling moves the king two squares toward a rook, which then jumps over it.",
    "Vaccines train the immune system by showing it a harmless piece of a pathogen.",
]


def test_zip_prefers_diverse_over_duplicates():
    template = "Please summarize the quarterly sales report for region {} and list the top three products."
    dupes = [template.format(i) for i in range(12)]
    texts = [t for pair in zip(dupes, DIVERSE) for t in pair]  # interleaved: duplicates at even indices
    table = zip_scores(texts, k1=24, k2=8, k3=4, scale=False, progress=False)
    top = select_indices(table, budget=12)
    assert sum(i % 2 == 1 for i in top) >= 10
    # per-sample ratios alone would not do it: one duplicate on its own compresses worse than most
    alone = sorted(range(24), key=lambda i: compression_ratio((texts[i] + "\n").encode()))[:12]
    assert sum(i % 2 == 0 for i in alone) >= 6  # at least half duplicates
    # the table's top-k is exactly ZIP's first k picks, for every k
    order = zip_order(texts, k1=24, k2=8, k3=4, scale=False)
    for k in (1, 5, 12, 24):
        assert select_indices(table, budget=k) == order[:k]
    # and its selection compresses worse (less redundant) than the duplicate half
    pick = "\n".join(texts[i] for i in top).encode()
    dup = "\n".join(dupes).encode()
    assert compression_ratio(pick) < compression_ratio(dup)


def test_zip_budget_and_stage_sizes():
    rng = random.Random(3)
    texts = [_words(rng, 10) for _ in range(40)]
    full = zip_order(texts, k1=20, k2=6, k3=3, scale=False)
    part = zip_scores(texts, k1=20, k2=6, k3=3, scale=False, ratio=0.25, progress=False)
    assert select_indices(part, budget=10) == full[:10]
    assert sorted(part.column("score").to_pylist()) == list(range(1, 41))
    assert zip_stage_sizes(300_000) == (10000, 200, 100)  # the reference sizes at the reference scale
    assert zip_stage_sizes(1000) == (64, 16, 8)
    assert zip_stage_sizes(10, 10000, 200, 100) == (10, 10, 8)
    assert table_meta(zip_scores(POOL, progress=False))["method"] == "zip"


# ---------------------------------------------------------------- registry
def test_registry_names_and_errors():
    assert {"random", "loss", "ifd", "zip", "longest", "dsir", "bm25", "embed", "mona", "igds", "igds_recall_only",
            "igds_random_candidates", "igds_jaccard"} <= set(SELECTORS)
    with pytest.raises(KeyError, match="unknown selector 'nope'; known: .*bm25.*random"):
        get_selector("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register("random")(type("Again", (Selector,), {"score": lambda self, pool, ctx: None}))
    with pytest.raises(ValueError, match=r"selector 'random': unknown option\(s\) \['kep'\]"):
        run_selector("random", POOL, SelectionContext(options={"kep": 1}))
    with pytest.raises(ValueError, match="selector 'loss' needs model"):
        run_selector("loss", POOL, SelectionContext())
    with pytest.raises(ValueError, match="selector 'mona' needs model and task and sae"):
        run_selector("mona", POOL, SelectionContext())
    with pytest.raises(ValueError, match="needs options config"):
        run_selector("igds", POOL, SelectionContext(model=object()))


def test_model_free_selectors_write_the_standard_table():
    ctx = SelectionContext(task=ARITH_TASK, seed=3)
    for name in ("random", "zip", "longest", "dsir", "bm25"):
        t = run_selector(name, POOL, ctx)
        assert t.column_names[:4] == ["index", "id", "score", "n_tokens"], name
        assert t.column("id").to_pylist() == [e.id for e in POOL] and table_meta(t)["method"] == name


def test_igds_ablations_change_only_the_filter(monkeypatch, tmp_path):
    from igds.config import RunConfig
    from igds.selectors import frs

    seen = []

    def fake(lm, cfg, run_dir):
        seen.append(cfg.filter)
        return random_scores(POOL), None

    monkeypatch.setattr(frs, "igds_scores", fake)
    cfg = RunConfig()
    for name in ("igds", "igds_filtered", "igds_recall_only", "igds_random_candidates"):
        run_selector(name, POOL, SelectionContext(model=object(), options={"config": cfg, "run_dir": tmp_path}))
    # the filter is off by default: igds follows the config, igds_filtered turns it on, recall_only off
    assert [(f.enabled, f.random_candidates) for f in seen] == [(False, False), (True, False), (False, False),
                                                               (False, True)]
    cfg.filter.enabled = True
    for name in ("igds", "igds_recall_only"):
        run_selector(name, POOL, SelectionContext(model=object(), options={"config": cfg, "run_dir": tmp_path}))
    assert [f.enabled for f in seen[-2:]] == [True, False]
    assert cfg.filter.enabled and not cfg.filter.random_candidates  # the caller's config is not touched
    monkeypatch.setattr(frs, "igds_scores", lambda lm, cfg, run_dir: (random_scores(POOL[:2]), None))
    with pytest.raises(RuntimeError, match="pool order"):
        run_selector("igds", POOL, SelectionContext(model=object(), options={"config": cfg, "run_dir": tmp_path}))


# ---------------------------------------------------------------- targeting selectors on a planted pool
ARITH_TASK = [_ex(100 + i, f"What is {a} plus {b}?", f"{a} plus {b} equals {a + b}. The sum is {a + b}.")
              for i, (a, b) in enumerate([(12, 7), (30, 45), (8, 9), (21, 14), (5, 60), (17, 17)])]
ARITH_LIKE = [_ex(i, f"What is {a} plus {b}?", f"Adding them: {a} plus {b} equals {a + b}.")
              for i, (a, b) in enumerate([(3, 4), (11, 22), (40, 2), (9, 9), (13, 31), (6, 70)])]
UNRELATED = [_ex(50 + i, text.split(",")[0] + "?", text) for i, text in enumerate(DIVERSE[:6])]
# interleaved (arithmetic at even positions), so a constant score (ties by index) or a reversed one fails
MIXED = [e for pair in zip(ARITH_LIKE, UNRELATED) for e in pair]
ON_TASK = list(range(0, 12, 2))


@pytest.mark.parametrize("name,options", [("dsir", {}), ("bm25", {}), ("bm25", {"aggregate": "max"})])
def test_text_targeting_selectors_rank_task_rows_first(name, options):
    table = run_selector(name, MIXED, SelectionContext(task=ARITH_TASK, options=options))
    assert sorted(select_indices(table, budget=6)) == ON_TASK
    assert table_meta(table)["method"] == name


def test_bm25_aggregates_mean_or_max():
    mean = run_selector("bm25", MIXED, SelectionContext(task=ARITH_TASK))
    best = run_selector("bm25", MIXED, SelectionContext(task=ARITH_TASK, options={"aggregate": "max"}))
    assert np.all(best.column("score").to_numpy() >= mean.column("score").to_numpy())
    np.testing.assert_allclose(best.column("score").to_numpy(), mean.column("bm25_max").to_numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="aggregate"):
        run_selector("bm25", MIXED, SelectionContext(task=ARITH_TASK, options={"aggregate": "median"}))


SEVENS_TASK = [_ex(200 + i, f"Count the sevens in {s}", f"{s} has {len(s)} sevens: {s}")
               for i, s in enumerate(["777", "7777", "77", "77777"])]
SEVENS_POOL = [e for pair in zip(
    [_ex(i, f"Write {s}", f"{s} 7 {s}") for i, s in enumerate(["77", "777", "7777", "77777"])],
    [_ex(10 + i, q, a) for i, (q, a) in enumerate([("Name a fruit", "apple"), ("Say hello", "hello there"),
                                                   ("A colour?", "blue sky"), ("Greet me", "good day")])])
    for e in pair]


@pytest.fixture
def planted_ctx(tiny_lm):
    """The tiny model and an SAE whose feature 5 fires on "7" (feature 2 always on at 1, the rest dead)."""
    from planted import blank_sae, plant_always_on, plant_detector

    def chat(e):  # the detector is fitted on the texts as the selectors read them
        return tiny_lm.tokenizer.apply_chat_template(e.messages + [{"role": "assistant", "content": e.response}],
                                                     tokenize=False)

    sae = blank_sae(tiny_lm, 1)
    plant_detector(tiny_lm, sae, 5, 1, [chat(e) for e in SEVENS_TASK], [chat(e) for e in SEVENS_POOL[1::2]], "7")
    with torch.no_grad():  # ReLU is positively homogeneous: same on/off pattern, activations far above 0
        sae.W_enc[:, 5] *= 1000
        sae.b_enc[5] *= 1000
    plant_always_on(sae, 2)
    return SelectionContext(model=tiny_lm, task=SEVENS_TASK, sae=sae, max_length=128)


@pytest.mark.parametrize("name", ["embed", "mona", "igds_jaccard"])
def test_sae_selectors_rank_task_rows_first(planted_ctx, name):
    table = run_selector(name, SEVENS_POOL, planted_ctx)
    assert sorted(select_indices(table, budget=4)) == [0, 2, 4, 6]
    assert table_meta(table)["method"] == name and min(table.column("n_tokens").to_pylist()) > 0


def test_mona_is_generalised_jaccard_of_the_planted_codes(planted_ctx):
    """Feature 2 is always 1 and feature 5 fires only on "7": a row without a 7 has code (1, 0), so its
    Jaccard to the prototype (1, p5) is exactly 1 / (1 + p5), the same for every such row."""
    jac = run_selector("mona", SEVENS_POOL, planted_ctx).column("jaccard").to_numpy()
    off = jac[1::2]
    np.testing.assert_allclose(off, off[0], rtol=1e-5)
    assert 0 < off[0] < 1 and np.all(jac[0::2] > off.max())


def test_embed_and_mona_share_one_forward_pass(planted_ctx, monkeypatch):
    from igds.selectors import sae_means

    calls = []
    real = sae_means.iter_activation_batches
    monkeypatch.setattr(sae_means, "iter_activation_batches", lambda *a, **k: calls.append(1) or real(*a, **k))
    shared: dict = {}
    for name in ("embed", "mona"):
        ctx = SelectionContext(model=planted_ctx.model, task=SEVENS_TASK, sae=planted_ctx.sae, max_length=128,
                               shared=shared)
        run_selector(name, SEVENS_POOL, ctx)
    assert len(calls) == 2  # one pass over the task, one over the pool, for both selectors


# ---------------------------------------------------------------- igds_jaccard: causally weighted MoNA
def test_igds_jaccard_without_causal_weight_is_mona(planted_ctx):
    mona = run_selector("mona", SEVENS_POOL, planted_ctx).column("score").to_numpy()
    ctx = SelectionContext(model=planted_ctx.model, task=SEVENS_TASK, sae=planted_ctx.sae, max_length=128,
                           options={"causal_weight": 0})
    plain = run_selector("igds_jaccard", SEVENS_POOL, ctx)
    np.testing.assert_allclose(plain.column("score").to_numpy(), mona, rtol=1e-6)
    assert table_meta(plain)["upweighted_features"] == 0
    with pytest.raises(ValueError, match="causal_weight must be a number >= 0"):
        run_selector("igds_jaccard", SEVENS_POOL, SelectionContext(
            model=planted_ctx.model, task=SEVENS_TASK, sae=planted_ctx.sae, options={"causal_weight": -1}))


def test_igds_jaccard_up_weights_the_causal_feature(tiny_lm):
    """Two planted features at the last block, both in the task: F5 fires on "7" and writes the unembedding
    row of "7" (amplifying it lowers the loss of the task's all-sevens answers), F6 fires on "x" and writes
    nothing (attribution exactly 0). Plain generalised Jaccard ranks the x-rich rows first; weighting F5 by
    its attribution t-statistic puts the 7-rich rows first, and moves every row the expected way."""
    from planted import blank_sae, plant_detector

    layer = tiny_lm.n_layers - 1
    task = [_ex(300 + i, f"x x x {i}: say sevens", "7" * (6 + i)) for i in range(6)]
    sevens = [_ex(i, f"write {i}", "7 7 7 and some words") for i in range(4)]
    exes = [_ex(10 + i, "x x x x please", f"fine {i}") for i in range(4)]
    pool = [e for pair in zip(sevens, exes) for e in pair]  # 7-rich rows at even positions
    texts = [tiny_lm.tokenizer.apply_chat_template(e.messages + [{"role": "assistant", "content": e.response}],
                                                   tokenize=False) for e in task + pool]
    sae = blank_sae(tiny_lm, layer)
    plant_detector(tiny_lm, sae, 5, layer, texts, [], "7")
    plant_detector(tiny_lm, sae, 6, layer, texts, [], "x")
    _, W_U = tiny_lm.unembedding()
    with torch.no_grad():
        for j in (5, 6):  # ReLU is positively homogeneous: same on/off pattern, activations far above 0
            sae.W_enc[:, j] *= 1000
            sae.b_enc[j] *= 1000
        sae.W_dec[5] = torch.nn.functional.normalize(W_U[tiny_lm.tokenizer.convert_tokens_to_ids("7")], dim=0)
        sae.W_dec[6] = 0
    table = run_selector("igds_jaccard", pool, SelectionContext(model=tiny_lm, task=task, sae=sae, max_length=128))
    plain, weighted = table.column("jaccard").to_numpy(), table.column("weighted_jaccard").to_numpy()
    assert sorted(select_indices(table, budget=4)) == [0, 2, 4, 6]
    assert np.all(plain[1::2] > plain[0::2].max())  # unweighted, the x-rich rows lead
    assert np.all(weighted[0::2] > plain[0::2]) and np.all(weighted[1::2] < plain[1::2])
    meta = table_meta(table)
    assert meta["upweighted_features"] >= 1 and meta["max_weight"] > 2 and meta["screen_n"] == len(task)


def test_igds_jaccard_shares_the_pool_pass_with_embed_and_mona(planted_ctx, monkeypatch):
    from igds.selectors import sae_means

    calls = []
    real = sae_means.iter_activation_batches
    monkeypatch.setattr(sae_means, "iter_activation_batches", lambda *a, **k: calls.append(1) or real(*a, **k))
    shared: dict = {}
    for name in ("igds_jaccard", "embed", "mona", "igds_jaccard"):
        ctx = SelectionContext(model=planted_ctx.model, task=SEVENS_TASK, sae=planted_ctx.sae, max_length=128,
                               shared=shared)
        run_selector(name, SEVENS_POOL, ctx)
    assert len(calls) == 2  # one pass over the task, one over the pool, for all three


def test_mean_codes_of_a_topk_sae_from_its_k_values_equal_the_dense_mean(tiny_lm, monkeypatch):
    """ExampleMeans adds a TopK SAE's k chosen values per token (no dense codes); the mean code must be
    the one the dense ``encode`` gives, chunk boundaries included."""
    from igds.sae import SAE
    from igds.selectors.sae_means import ExampleMeans

    torch.manual_seed(5)
    sae = SAE(tiny_lm.d_model, 48, "topk", k=6, metadata={"layer": 1})
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.2)
    means = ExampleMeans(tiny_lm, sae, max_length=128, chunk_tokens=7)
    sparse = [c for _, _, c, _ in means.batches(SEVENS_POOL)]
    monkeypatch.setattr(sae, "encode_sparse", lambda x: None)  # the dense path
    dense = [c for _, _, c, _ in means.batches(SEVENS_POOL)]
    assert (torch.cat(dense) > 0).sum(dim=1).min() > 6  # the means mix several tokens' k features
    for a, b in zip(sparse, dense):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
