import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from bench.config import Recipe
from bench.data import load_dataset
from bench.data.captions import shapes
from bench.evaluate import class_embeddings, clip_benchmark_record, text_side, write_clip_benchmark
from bench.optim import build_optimizer
from methods import METHODS
from methods.base import Batch, Context, make_config
from methods.losses.clip import clip_loss
from methods.text import CBOW, EOT, PAD, UNK, TextTransformer, WordTokenizer, words
from protocols import PROTOCOLS
from protocols.base import Features, classification_metrics
from protocols.zero_shot import retrieval_recall

# ----------------------------------------------------------------------------- loss


def clip_fig3_reference(image_features, text_features, w_i, w_t, t):
    """CLIP (Radford et al. 2021) Fig. 3 pseudo-code, line by line in numpy float64."""

    def l2_normalize(x, axis):
        return x / np.linalg.norm(x, axis=axis, keepdims=True)

    def cross_entropy_loss(logits, labels, axis):
        logp = logits - logsumexp(logits, axis=axis, keepdims=True)
        return -np.mean(np.take_along_axis(logp, np.expand_dims(labels, axis), axis=axis))

    i_e = l2_normalize(image_features @ w_i, axis=1)
    t_e = l2_normalize(text_features @ w_t, axis=1)
    logits = i_e @ t_e.T * np.exp(t)
    n = len(logits)
    labels = np.arange(n)
    loss_i = cross_entropy_loss(logits, labels, axis=0)
    loss_t = cross_entropy_loss(logits, labels, axis=1)
    return (loss_i + loss_t) / 2


@pytest.mark.parametrize("n,d_i,d_t,d_e,t", [(1, 3, 4, 2, 0.0), (4, 5, 3, 6, math.log(1 / 0.07)), (9, 8, 8, 16, math.log(100))])
def test_clip_loss_matches_paper_pseudocode(n, d_i, d_t, d_e, t):
    rng = np.random.default_rng(n)
    i_f, t_f = rng.normal(size=(n, d_i)), rng.normal(size=(n, d_t))
    w_i, w_t = rng.normal(size=(d_i, d_e)), rng.normal(size=(d_t, d_e))
    ours = clip_loss(torch.from_numpy(i_f @ w_i), torch.from_numpy(t_f @ w_t), torch.tensor(math.exp(t), dtype=torch.float64))
    assert ours.dtype == torch.float64
    assert float(ours) == pytest.approx(clip_fig3_reference(i_f, t_f, w_i, w_t, t), rel=1e-10, abs=1e-12)


def test_clip_loss_prefers_matched_pairs_and_ignores_norms():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g, dtype=torch.float64)
    assert clip_loss(x, x, 10.0) < clip_loss(x, torch.randn(16, 8, generator=g, dtype=torch.float64), 10.0)
    assert float(clip_loss(3 * x, x, 10.0)) == pytest.approx(float(clip_loss(x, x, 10.0)), rel=1e-12)


# ----------------------------------------------------------------------------- tokeniser and text encoders

CAPTIONS = ["A red circle at the top.", "a BLUE square, in the middle", "a t-shirt/top with short sleeves", "the red square"]


def test_tokeniser_round_trip_and_specials():
    tok = WordTokenizer(CAPTIONS)
    ids = tok.encode(CAPTIONS)
    assert ids.dtype == torch.int64 and ids.shape == (4, max(len(words(c)) for c in CAPTIONS) + 1)
    for row, text in zip(ids, CAPTIONS, strict=True):
        assert tok.decode(row) == " ".join(words(text))
        n = len(words(text))
        assert row[n] == EOT and (row[n + 1:] == PAD).all() and (row[:n] > EOT).all()
    assert "t-shirt/top" in tok.stoi


def test_tokeniser_unknown_words_and_truncation():
    tok = WordTokenizer(CAPTIONS, max_len=4)
    ids = tok.encode(["a purple hexagon", "a red circle at the top"])
    assert ids[0].tolist() == [tok.stoi["a"], UNK, UNK, EOT]
    assert tok.decode(ids[0]) == "a <unk> <unk>"
    assert ids[1].tolist() == [tok.stoi["a"], tok.stoi["red"], tok.stoi["circle"], EOT]


def test_vocabulary_is_deterministic():
    a, b = WordTokenizer(CAPTIONS), WordTokenizer(list(reversed(CAPTIONS)))
    assert a.itos == b.itos and a.itos[:3] == ["<pad>", "<unk>", "<eot>"]
    assert a.itos[3] == "a"  # the most frequent word first


@pytest.mark.parametrize("encoder", [lambda v: CBOW(v, 16), lambda v: TextTransformer(v, 12, 16, 2, 2, "eot"),
                                     lambda v: TextTransformer(v, 12, 16, 2, 2, "cls")], ids=["cbow", "eot", "cls"])
def test_text_encoders_ignore_padding(encoder):
    torch.manual_seed(0)
    tok = WordTokenizer(CAPTIONS)
    net = encoder(len(tok)).eval()
    ids = tok.encode(CAPTIONS)
    padded = torch.cat([ids, torch.full((len(ids), 3), PAD)], 1)
    out = net(ids)
    assert out.shape == (4, 16)
    torch.testing.assert_close(net(padded), out, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out[0], out[1])


# ----------------------------------------------------------------------------- zero-shot pieces


def test_prompt_ensembling_by_hand():
    vectors = {"a cat.": [3.0, 4.0], "the cat!": [1.0, 0.0], "a dog.": [0.0, 2.0], "the dog!": [-5.0, 0.0]}
    enc = lambda texts: torch.tensor([vectors[t] for t in texts])  # noqa: E731
    w = class_embeddings(enc, ["cat", "dog"], ["a {}.", "the {}!"])
    # cat: normalise (0.6, 0.8) and (1, 0); mean (0.8, 0.4); renormalise (2, 1)/sqrt(5).
    # dog: normalise (0, 1) and (-1, 0); mean (-0.5, 0.5); renormalise (-1, 1)/sqrt(2).
    torch.testing.assert_close(w[0], torch.tensor([2.0, 1.0]) / math.sqrt(5))
    torch.testing.assert_close(w[1], torch.tensor([-1.0, 1.0]) / math.sqrt(2))


def test_classification_metrics_by_hand():
    ranked = [6.0, 5, 4, 3, 2, 1]
    logits = torch.tensor([ranked, ranked, ranked, [1.0, 6, 5, 4, 3, 2], ranked])
    y = torch.tensor([0, 2, 5, 1, 1])
    m = classification_metrics(logits, y, 6)
    # predictions 0, 0, 0, 1, 0; class 5 is ranked 6th.
    assert m["top1"] == pytest.approx(2 / 5) and m["top5"] == pytest.approx(4 / 5)
    # recall per class present: 0 -> 1, 1 -> 1/2, 2 -> 0, 5 -> 0.
    assert m["mean_per_class_recall"] == pytest.approx(1.5 / 4)
    assert math.isnan(classification_metrics(logits[:, :4], y.clamp(max=3), 4)["top5"])


def test_retrieval_recall_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    txt = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    owner = torch.tensor([0, 1, 1])  # image 2 belongs to text 1 but looks like text 0
    r = retrieval_recall(img, txt, owner, ks=(1, 2))
    assert r["i2t_r1"] == pytest.approx(2 / 3) and r["i2t_r2"] == 1.0
    # text 0 -> image 0 (right); text 1 -> image 1 (right): any positive counts.
    assert r["t2i_r1"] == 1.0


def test_clip_benchmark_record_shape():
    metrics = {"zero-shot": {"top1": 0.5, "top5": 0.9, "mean_per_class_recall": 0.45, "templates": 8},
               "retrieval": {f"{d}_r{k}": 0.1 * k for d in ("i2t", "t2i") for k in (1, 5, 10)}}
    rec = clip_benchmark_record(metrics, "shapes", "clip-convnet")
    assert set(rec) == {"dataset", "model", "pretrained", "task", "metrics"}
    assert rec["task"] == "zeroshot_classification"
    assert rec["metrics"] == {"acc1": 0.5, "acc5": 0.9, "mean_per_class_recall": 0.45}
    ret = clip_benchmark_record(metrics, "shapes", "clip-convnet", task="zeroshot_retrieval")
    assert ret["metrics"]["image_retrieval_recall@5"] == metrics["retrieval"]["t2i_r5"]
    assert ret["metrics"]["text_retrieval_recall@1"] == metrics["retrieval"]["i2t_r1"]


def test_zero_shot_skips_features_without_a_text_side():
    f = Features(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    assert PROTOCOLS.get("zero-shot")(f, f, seed=0) == {}


# ----------------------------------------------------------------------------- the method


@pytest.fixture(scope="module")
def small_shapes():
    return shapes(n_train=120, n_test=60)


def _shapes_batch(ds, method, n=32):
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in ds.mean_std())
    x = (ds.train_x[:n].float() / 255 - mean) / std
    idx = torch.arange(n)
    text = method.train_tokens[idx] if method.train_tokens is not None else None
    return Batch(views=[x], images=x, labels=ds.train_y[:n], index=idx, text=text)


def _context(ds):
    return Context(in_channels=ds.channels, image_size=ds.image_size, num_classes=ds.num_classes, num_train=len(ds.train_y),
                   backbone_args={"widths": (8, 16)}, train_text=ds.train_text, class_names=tuple(ds.classes))


@pytest.mark.parametrize("args", [{}, {"text_encoder": "cbow"}, {"pooling": "cls"}], ids=["transformer", "cbow", "cls"])
def test_clip_trains_on_captions(args, small_shapes):
    torch.manual_seed(0)
    ds = small_shapes
    cls = METHODS.get("clip")
    m = cls(_context(ds), make_config(cls, {"text_width": 32, **args}))
    assert m.train_tokens.shape[0] == len(ds.train_y) and m.caption_source == "dataset"
    batch = _shapes_batch(ds, m)
    opt = build_optimizer(m, Recipe(optimizer="adamw", lr=2e-3, weight_decay=0.0), 256)
    losses = []
    for step in range(8):
        loss = m.training_step(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.on_step_end(step + 1, 8)
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.5
    emb = m.encode_text(["a red circle", "a zebra"])
    assert emb.shape == (2, m.cfg.embed_dim)
    assert m.encode_image(batch.images[:3]).shape == (3, m.cfg.embed_dim)


def test_logit_scale_starts_at_one_over_007_and_is_clamped_at_100(small_shapes):
    ds = small_shapes
    cls = METHODS.get("clip")
    m = cls(_context(ds), make_config(cls, {}))
    assert float(m.scale().detach()) == pytest.approx(1 / 0.07)
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    assert float(m.scale().detach()) == 100.0
    m.on_step_end(1, 1)
    assert m.logit_scale.item() == pytest.approx(math.log(100))


def test_clip_falls_back_to_class_name_captions():
    ds = load_dataset("digits", per_class=10)
    assert ds.train_text is None
    cls = METHODS.get("clip")
    m = cls(_context(ds), make_config(cls, {"text_width": 32}))
    assert m.train_tokens is None and m.caption_source == "class-name fallback"
    assert m.tokenizer.decode(m.class_tokens[3]) == "a photo of a 3 ."
    out = m.training_step(_shapes_batch(ds, m, 32))
    assert math.isfinite(float(out["loss"]))
    # Zero-shot still runs, and says the captions were the class names.
    test_ds = replace(ds, test_x=ds.train_x[:32], test_y=ds.train_y[:32])
    x = m.encoder(_shapes_batch(ds, m, 32).images).detach()
    feats = Features(x, test_ds.test_y, 10, "test", text_side(m.eval(), test_ds, x, "cpu"))
    res = PROTOCOLS.get("zero-shot")(feats, feats, seed=0)
    assert set(res) == {"zero-shot"} and res["zero-shot"]["captions"] == "class-name fallback"
    assert 0.0 <= res["zero-shot"]["top1"] <= 1.0


def test_cli_run_writes_zero_shot_metrics(tmp_path):
    from bench.cli import main

    code = main(["run", "--method", "clip", "--dataset", "shapes", "--epochs", "1", "--per-class", "50",
                 "--out", str(tmp_path), "--protocols", "zero-shot", "--no-progress"])
    assert code == 0
    (record_path,) = tmp_path.rglob("record.json")
    metrics = json.loads(record_path.read_text())["metrics"]
    assert {"zero-shot", "zero-shot-shape", "zero-shot-colour", "zero-shot-combination", "retrieval"} <= set(metrics)
    combo = metrics["zero-shot-combination"]
    assert combo["num_classes"] == 36 and combo["classes_in_split"] == 6 and combo["templates"] >= 1
    for key in ("zero-shot", "zero-shot-colour"):
        assert 0.0 <= metrics[key]["top1"] <= metrics[key]["top5"] <= 1.0
        assert metrics[key]["split"] == "test" and metrics[key]["seed"] == 0
    assert 0.0 <= metrics["retrieval"]["i2t_r1"] <= metrics["retrieval"]["i2t_r10"] <= 1.0
    paths = write_clip_benchmark(metrics, record_path.parent, "shapes", "clip-convnet")
    assert [p.name for p in paths] == ["clip_benchmark_zeroshot_classification.json", "clip_benchmark_zeroshot_retrieval.json"]
    assert json.loads(paths[0].read_text())["metrics"]["acc1"] == metrics["zero-shot"]["top1"]


def test_zero_shot_reports_misaligned_class_sets(small_shapes):
    # A split subset without its extras: the class sets' labels no longer fit the images.
    ds = replace(small_shapes, test_x=small_shapes.test_x[:18], test_y=small_shapes.test_y[:18],
                 test_text=small_shapes.test_text[:18])
    cls = METHODS.get("clip")
    m = cls(_context(ds), make_config(cls, {"text_width": 32})).eval()
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in ds.mean_std())
    with torch.no_grad():
        x = m.encoder((ds.test_x.float() / 255 - mean) / std)
    f = Features(x, ds.test_y, split="test", text=text_side(m, ds, x, "cpu"))
    res = PROTOCOLS.get("zero-shot")(f, f, seed=0)
    assert "top1" in res["zero-shot"] and "error" in res["zero-shot-colour"]
    assert res["retrieval"]["images"] == len(ds.test_y) == 18


def test_text_side_projects_cached_features_as_encode_image_does(small_shapes):
    ds = small_shapes
    cls = METHODS.get("clip")
    m = cls(_context(ds), make_config(cls, {"text_width": 32})).eval()
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in ds.mean_std())
    images = (ds.test_x.float() / 255 - mean) / std
    with torch.no_grad():
        side = text_side(m, ds, m.encoder(images), "cpu")
        torch.testing.assert_close(side.image, m.encode_image(images))
    assert [cs.key for cs in side.class_sets] == ["zero-shot", "zero-shot-shape", "zero-shot-colour", "zero-shot-combination"]
    assert side.captions.shape == (len(set(ds.test_text)), m.cfg.embed_dim)
    assert [ds.test_text[i] for i in range(5)] == [sorted(set(ds.test_text))[j] for j in side.caption_of_image[:5]]
    res = PROTOCOLS.get("zero-shot")(*[Features(torch.zeros(len(images), 3), ds.test_y, text=side)] * 2, retrieval_images=20)
    assert res["retrieval"]["images"] == 20 and res["retrieval"]["texts"] <= 20
