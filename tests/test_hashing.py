"""Hash heads, losses, KIDDO and the Hasher API, on small tensors and the real `tiny` open_clip config."""

import itertools
import math

import numpy as np
import pytest
import torch
from helpers import fresh_tiny

from kalahash.hashing import (
    KIDDO,
    LOSSES,
    CSQLoss,
    DPSHLoss,
    HashHead,
    KnowledgeAnchors,
    MDSHLoss,
    build_hasher,
    csq_centers,
    gilbert_varshamov_distance,
    hadamard,
    kiddo_b_step,
    kiddo_objective,
    mdsh_centers,
)
from kalahash.lora import adapters

CLASSES = ["cat", "dog", "car", "ship"]


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def train_labels(n: int = 8) -> np.ndarray:
    return np.eye(len(CLASSES), dtype=np.uint8)[np.arange(n) % len(CLASSES)]


# ------------------------------------------------------------------------------------------- B-step


def naive_b_step(B, W, Y, U, alpha, beta, sweeps):
    """The notes' rule written out literally (B', W' by concatenation), with the keep-on-tie rule."""
    B = B.clone()
    ties = 0
    for _ in range(sweeps):
        for i in range(B.shape[0]):
            P = W @ Y + beta / alpha * U
            W_prime = torch.cat([W[:i], W[i + 1 :]])
            B_prime = torch.cat([B[:i], B[i + 1 :]])
            q = P[i] - B_prime.t() @ W_prime @ W[i]
            ties += int((q == 0).sum())
            B[i] = torch.where(q > 0, 1.0, torch.where(q < 0, -1.0, B[i]))
    return B, ties


def random_problem(seed, bits=5, n=7, classes=3, integer=False):
    g = torch.Generator().manual_seed(seed)
    if integer:  # exact arithmetic in float64, so exact ties happen and both versions agree bit for bit
        W = torch.randint(-2, 3, (bits, classes), generator=g).double()
        U = torch.randint(-2, 3, (bits, n), generator=g).double()
    else:
        W = torch.randn(bits, classes, generator=g, dtype=torch.float64)
        U = torch.rand(bits, n, generator=g, dtype=torch.float64) * 2 - 1
    Y = (torch.rand(classes, n, generator=g) < 0.4).double()
    B = torch.randint(0, 2, (bits, n), generator=g).double() * 2 - 1
    return B, W, Y, U


def test_b_step_matches_naive_rule_bit_for_bit_including_ties():
    total_ties = 0
    for seed in range(12):
        B, W, Y, U = random_problem(seed, integer=True)
        before = B.clone()
        fast = kiddo_b_step(B, W, Y, U, alpha=0.5, beta=1.0, sweeps=3)
        slow, ties = naive_b_step(B, W, Y, U, 0.5, 1.0, 3)
        total_ties += ties
        assert torch.equal(fast, slow)
        assert torch.equal(B, before)  # input not mutated
        assert set(fast.unique().tolist()) <= {-1.0, 1.0}
    assert total_ties > 0  # the cases did exercise the tie rule


def test_b_step_keeps_the_current_bit_on_an_exact_tie():
    # One bit, so P_1 = W Y + (β/α) U alone decides; with W = 0 and U = 0 every entry is a tie.
    W = torch.zeros(1, 2)
    Y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    U = torch.tensor([[0.0, 0.5, -0.5]])
    B = torch.tensor([[-1.0, -1.0, 1.0]])
    out = kiddo_b_step(B, W, Y, U, alpha=0.1, beta=1.0, sweeps=1)
    assert out.tolist() == [[-1.0, 1.0, -1.0]]  # entry 0 is a tie: kept; others follow sign(U)


def test_b_step_never_increases_the_objective():
    # The B-step minimises α‖Y − WᵀB‖² + β‖B − U‖² one row at a time, so it can only go down.
    for seed in range(5):
        B, W, Y, U = random_problem(seed, bits=8, n=30, classes=4)
        alpha, beta = 0.1, 1.0
        values = [kiddo_objective(B, W, Y, U, alpha, beta)]
        for _ in range(6):
            B = kiddo_b_step(B, W, Y, U, alpha, beta, sweeps=1)
            values.append(kiddo_objective(B, W, Y, U, alpha, beta))
        assert all(b <= a + 1e-9 * abs(a) for a, b in itertools.pairwise(values))
        assert values[-1] < values[0]


def test_each_bit_update_is_the_exact_row_minimiser():
    bits, n = 3, 4
    for seed in range(4):
        B, W, Y, U = random_problem(seed, bits=bits, n=n, classes=2)
        alpha, beta = 0.3, 1.0
        after = kiddo_b_step(B, W, Y, U, alpha, beta, sweeps=1)
        for i in range(bits):
            # when bit i was updated: rows < i already new, rows > i still old
            context = torch.cat([after[:i], B[i:]])
            best, best_value = None, math.inf
            for row in itertools.product([-1.0, 1.0], repeat=n):
                trial = context.clone()
                trial[i] = torch.tensor(row, dtype=trial.dtype)
                value = kiddo_objective(trial, W, Y, U, alpha, beta)
                if value < best_value:
                    best, best_value = trial[i].clone(), value
            assert torch.equal(after[i], best)


def test_b_step_bad_input():
    B, W, Y, U = random_problem(0)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        kiddo_b_step(B, W, Y, U, alpha=0.0, beta=1.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        kiddo_b_step(B, W[:, :2], Y, U, alpha=0.1, beta=1.0)
    with pytest.raises(ValueError, match="only -1 and"):
        kiddo_b_step(B * 0, W, Y, U, alpha=0.1, beta=1.0)


# ------------------------------------------------------------------------------------------- centres


def test_hash_centres():
    h = hadamard(16)
    assert torch.equal(h @ h.t(), 16 * torch.eye(16))
    torch.manual_seed(0)
    c = csq_centers(20, 16)  # 20 <= 2 * 16: rows of [H; -H]
    d = (16 - c @ c.t()) / 2
    assert d[~torch.eye(20, dtype=torch.bool)].min() >= 8
    # Gilbert–Varshamov distance, by hand: Σ_{j<6} C(16, j) = 6885 ≥ 2^16/10 > Σ_{j<5} = 2517
    assert gilbert_varshamov_distance(16, 10) == 6
    assert gilbert_varshamov_distance(16, 80) == 5
    torch.manual_seed(0)
    centres, target = mdsh_centers(80, 16)
    d = (16 - centres @ centres.t()) / 2
    assert target == 5 and d[~torch.eye(80, dtype=torch.bool)].min() >= 5
    torch.manual_seed(0)
    assert d[~torch.eye(80, dtype=torch.bool)].min() > _min_distance(csq_centers(80, 16))  # MDSH improved it


def _min_distance(codes):
    d = (codes.shape[1] - codes @ codes.t()) / 2
    return d[~torch.eye(len(codes), dtype=torch.bool)].min()


def test_csq_multilabel_centre_is_sign_of_mean_with_tie_breaker():
    torch.manual_seed(0)
    loss = CSQLoss()
    loss.setup(3, 8, None)
    c = loss.centers
    labels = torch.tensor([[1.0, 0, 0], [1, 1, 1], [1, 1, 0]])
    target = loss.targets(labels)
    assert torch.equal(target[0], c[0])
    assert torch.equal(target[1], torch.sign(c.mean(0)))  # three codes: never a tie
    tie = c[0] + c[1] == 0
    assert tie.any()
    assert torch.equal(target[2], torch.where(tie, loss.tie_breaker, torch.sign(c[0] + c[1])))


# ------------------------------------------------------------------------------------------- losses


def separable_problem(classes=4, per_class=8, dim=32, multi=False):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(classes).repeat_interleave(per_class)
    x = means[y] + 0.1 * torch.randn(len(y), dim, generator=g)
    labels = torch.nn.functional.one_hot(y, classes).float()
    if multi:  # every fourth image also carries the next class
        extra = torch.nn.functional.one_hot((y + 1) % classes, classes).float()
        labels[::4] = torch.clamp(labels[::4] + extra[::4], max=1)
    return x, labels


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("multi", [False, True])
def test_each_loss_decreases_on_a_separable_problem(name, multi):
    torch.manual_seed(0)
    x, labels = separable_problem(multi=multi)
    loss_fn = LOSSES[name]()
    loss_fn.setup(labels.shape[1], 16, labels)
    head = HashHead(x.shape[1], 16, batch_norm=loss_fn.batch_norm)
    opt = torch.optim.Adam(head.parameters(), lr=0.01)
    idx = torch.arange(len(x))
    values = []
    for _ in range(40):
        loss, parts = loss_fn(head(x), labels, idx)
        assert parts["loss"] == pytest.approx(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert values[-1] < 0.8 * values[0], values[::8]


def test_kiddo_loss_decreases_and_b_step_lowers_its_objective():
    torch.manual_seed(0)
    x, labels = separable_problem()
    knowledge = torch.randn(4, 24)
    head, anchors = HashHead(32, 16), KnowledgeAnchors(24, 16)
    kiddo = KIDDO(DPSHLoss(quantization=0.0))
    kiddo.setup(4, 16, labels.numpy())
    opt = torch.optim.Adam([*head.parameters(), *anchors.parameters()], lr=0.01)
    idx = torch.arange(len(x))
    values = []
    for step in range(40):
        u = head(x)
        terms = kiddo.terms(u, labels, idx, anchors(knowledge))
        assert torch.equal(kiddo.U[:, idx], u.detach().t())  # U[:, idx] <- u^T each batch
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        values.append(terms["loss"].item())
        if step % 10 == 9:
            with torch.no_grad():
                W = anchors(knowledge)
                before = kiddo.objective(W)
                kiddo.b_step(W)
                assert kiddo.objective(W) <= before + 1e-6
    assert values[-1] < 0.8 * values[0]


# ------------------------------------------------------------------------------------------- Hasher


def grads_by_name(hasher):
    return {n for n, p in hasher.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_kalahash_gradients_reach_only_A_F_head_G():
    hasher = build_hasher("kalahash", fresh_tiny(), CLASSES, 16, rank=2)
    hasher.begin_training(train_labels())
    u = hasher(images())
    loss, parts = hasher.loss_on_batch(u, torch.eye(4), torch.arange(4))
    assert set(parts) >= {"loss", "sim", "ali", "qua"}
    loss.backward()
    expected = {
        "visual.transformer.resblocks.1.attn.k_proj.lora_A",
        "visual.transformer.resblocks.1.attn.v_proj.lora_A",
        "visual.knowledge_pool.F.weight",
        "visual.knowledge_pool.F.bias",
        "head.linear.weight",
        "head.linear.bias",
        "anchors.linear.weight",
        "anchors.linear.bias",
    }
    assert grads_by_name(hasher) == expected
    assert {n for n, p in hasher.named_parameters() if p.grad is not None} == expected
    assert all(p.grad is None for p in hasher.backbone.model.transformer.parameters())  # text tower


def test_alignment_loss_reaches_G_only():
    hasher = build_hasher("kalahash", fresh_tiny(), CLASSES, 16, rank=2, kiddo_gamma=0.0, kiddo_beta=0.0)
    hasher.begin_training(train_labels())
    loss, _ = hasher.loss_on_batch(hasher(images()), torch.eye(4), torch.arange(4))
    loss.backward()  # loss = α L_ali only
    assert grads_by_name(hasher) == {"anchors.linear.weight", "anchors.linear.bias"}


@pytest.mark.parametrize(
    ("method", "expected_trainable_from"), [("lb", 2), ("lora", 1), ("clora", 1), ("fft", 0)]
)
def test_gradients_and_trainable_from_per_method(method, expected_trainable_from):
    hasher = build_hasher(method, fresh_tiny(), CLASSES, 8, rank=2)
    assert hasher.trainable_from == expected_trainable_from
    loss, _ = hasher.loss_on_batch(hasher(images()), torch.eye(4), torch.arange(4))
    loss.backward()
    with_grad = {n for n, p in hasher.named_parameters() if p.grad is not None}
    trainable = {n for n, p in hasher.named_parameters() if p.requires_grad}
    assert with_grad == trainable
    if method == "fft":
        assert trainable == {f"visual.{n}" for n, _ in hasher.visual.named_parameters()} | {
            "head.linear.weight",
            "head.linear.bias",
        }
    if method == "lb":
        assert trainable == {"head.linear.weight", "head.linear.bias"}
    if method == "lora":  # B starts at zero, so A's first gradient is zero; B's is not
        assert grads_by_name(hasher) >= {"visual.transformer.resblocks.1.attn.k_proj.lora_B"}


def test_lora_blocks_hparam_sets_trainable_from():
    hasher = build_hasher("lora", fresh_tiny(), CLASSES, 8, rank=2, blocks=[0], targets=["q"])
    assert hasher.trainable_from == 0
    assert hasher.hparams["blocks"] == [0] and hasher.hparams["targets"] == ["q"]


@pytest.mark.parametrize("method", ["kalahash", "lora", "lb"])
def test_forward_equals_cached_prefix_path_for_every_split(method):
    hasher = build_hasher(method, fresh_tiny(), CLASSES, 16, rank=2, loss="csq")  # csq: BN in the head
    x = images()
    for mode in (True, False):
        hasher.train(mode)
        with torch.no_grad():
            full = hasher(x)
            for k in range(hasher.num_blocks + 1):
                tokens = hasher.prefix_tokens(x, k)
                assert tokens.shape == (4, 17, 64)
                torch.testing.assert_close(hasher.forward_from_tokens(tokens, k), full, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match=r"upto must be an int in 0\.\.2"):
        hasher.prefix_tokens(x, 3)


def test_fresh_lora_hasher_sees_the_frozen_features_and_merges_exactly():
    reference = fresh_tiny()
    hasher = build_hasher("lora", fresh_tiny(), CLASSES, 16, rank=2)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(hasher.features(x), reference.encode_image(x), atol=0, rtol=0)
        for name, p in hasher.named_parameters():
            if "lora_" in name:
                p.normal_(std=0.05)
        hasher.eval()
        adapted = hasher(x)
        merged = hasher.merged()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(x), adapted, atol=1e-5, rtol=0)
    torch.testing.assert_close(hasher(x), adapted, atol=0, rtol=0)  # the original is untouched


@pytest.mark.parametrize("selection", ["random", "fixed"])
def test_selection_hparam_reaches_every_clora_layer_and_topr_stays_bit_identical(selection):
    x = images()
    default = build_hasher("kalahash", fresh_tiny(), CLASSES, 16, rank=2)
    rng_after_default = torch.get_rng_state()
    topr = build_hasher("kalahash", fresh_tiny(), CLASSES, 16, rank=2, selection="topr")
    assert torch.equal(torch.get_rng_state(), rng_after_default)  # no extra draw: training is unchanged
    other = build_hasher("kalahash", fresh_tiny(), CLASSES, 16, rank=2, selection=selection)
    assert default.hparams["selection"] == "topr" and other.hparams["selection"] == selection
    assert {m.selection for _, m in adapters(other.visual)} == {selection}
    with torch.no_grad():
        assert torch.equal(topr(x), default(x))
        assert not torch.equal(other(x), default(x))


def test_clora_hasher_with_zero_A_sees_the_frozen_features():
    reference = fresh_tiny()
    hasher = build_hasher("clora", fresh_tiny(), CLASSES, 16, rank=2)
    x = images()
    with torch.no_grad():
        assert not torch.allclose(hasher.features(x), reference.encode_image(x))  # B_i ≠ 0 from step 0
        for name, p in hasher.named_parameters():
            if name.endswith("lora_A"):
                p.zero_()
        torch.testing.assert_close(hasher.features(x), reference.encode_image(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="CLoRA cannot be merged"):
        hasher.merged()


def test_parameter_counts_match_hand_counts():
    width = embed = 64
    bits, r, c = 16, 2, len(CLASSES)
    hasher = build_hasher("kalahash", fresh_tiny(), CLASSES, bits, rank=r)
    counts = hasher.parameter_counts()
    assert counts == {
        "adapter": 2 * r * width,  # A (r × width) for k and v
        "knowledge_pool": embed * width + width,  # F: Linear(embed → width)
        "head": embed * bits + bits,
        "anchors": embed * bits + bits,  # G: Linear(embed → bits)
        "backbone_trainable": 0,
        "loss": 0,
        "total_trainable": 2 * r * width + embed * width + width + 2 * (embed * bits + bits),
    }
    assert counts["total_trainable"] == sum(p.numel() for p in hasher.trainable_parameters())
    assert hasher.knowledge.shape == (c, embed)
    bn = build_hasher("lora", fresh_tiny(), CLASSES, bits, rank=r, loss="mdsh", kiddo=True).parameter_counts()
    assert bn["adapter"] == 2 * 2 * r * width  # A and B
    assert bn["head"] == embed * bits + bits + 2 * bits  # + BatchNorm affine
    assert bn["anchors"] == embed * bits + bits + 2 * bits


def test_trained_state_round_trip_gives_identical_codes():
    hasher = build_hasher("kalahash", fresh_tiny(), CLASSES, 16, rank=2, loss="csq")
    hasher.begin_training(train_labels())
    opt = torch.optim.SGD(hasher.trainable_parameters(), lr=0.5)
    for _ in range(2):
        loss, _ = hasher.loss_on_batch(hasher(images()), torch.eye(4), torch.arange(4))
        opt.zero_grad()
        loss.backward()
        opt.step()
    hasher.end_epoch()
    state = hasher.trained_state()
    assert "criterion.B" in state and "criterion.U" in state and "head.bn.running_mean" in state
    assert not any(".base." in k or "resblocks.0" in k for k in state)  # frozen weights stay out

    backbone = fresh_tiny()  # the same frozen weights: trained_state holds only the trained parts
    torch.manual_seed(123)
    other = build_hasher("kalahash", backbone, CLASSES, 16, rank=2, loss="csq")  # other trainable init
    x = images(6, seed=5)
    assert not torch.equal(other.encode(x), hasher.encode(x))
    other.load_trained_state(state)
    assert torch.equal(other.encode(x), hasher.encode(x))
    assert torch.equal(other.criterion.B, hasher.criterion.B) and int(other.epochs_done) == 1

    bad = dict(state)
    bad.pop("head.linear.weight")
    bad["head.extra"] = torch.zeros(1)
    with pytest.raises(
        ValueError, match=r"missing keys \['head.linear.weight'\].*unexpected keys \['head.extra'\]"
    ):
        other.load_trained_state(bad)


def test_end_epoch_runs_the_b_step_with_the_anchors_of_the_last_forward_pass():
    hasher = build_hasher("kalahash", fresh_tiny(), CLASSES, 8, rank=2, kiddo_sweeps=3)
    hasher.begin_training(train_labels())
    u = hasher(images())
    with torch.no_grad():
        W = hasher.anchor_matrix()
    loss, _ = hasher.loss_on_batch(u, torch.eye(4), torch.arange(4))
    loss.backward()
    torch.optim.SGD(hasher.trainable_parameters(), lr=50.0).step()  # G moves: W after the step differs
    crit = hasher.criterion
    B0, U, Y = crit.B.clone(), crit.U.clone(), crit.Y.clone()
    with torch.no_grad():
        after = hasher.anchor_matrix()
    assert not torch.equal(kiddo_b_step(B0, W, Y, U, 0.1, 1.0, 3), kiddo_b_step(B0, after, Y, U, 0.1, 1.0, 3))
    hasher.end_epoch()
    assert torch.equal(crit.B, kiddo_b_step(B0, W, Y, U, 0.1, 1.0, sweeps=3))
    assert not torch.equal(crit.B, B0)


def test_hashnet_continuation_and_plug_and_play():
    hasher = build_hasher("lb", fresh_tiny(), CLASSES, 8, loss="hashnet")
    hasher.begin_training(train_labels())
    for _ in range(20):
        hasher.end_epoch()
    assert float(hasher.head.scale) == pytest.approx(math.sqrt(2))  # β = sqrt(epoch // 20 + 1)
    combo = build_hasher("clora", fresh_tiny(), CLASSES, 8, rank=2, loss="mdsh", kiddo=True)
    assert isinstance(combo.criterion, KIDDO) and isinstance(combo.criterion.similarity, MDSHLoss)
    assert combo.criterion.similarity.quantization == 0.0  # KIDDO's L_qua replaces it
    assert combo.hparams["batch_norm"] is True and combo.head.bn is not None and combo.anchors.bn is not None


def test_modes_keep_the_frozen_tower_in_eval():
    hasher = build_hasher("kalahash", fresh_tiny(), CLASSES, 8, rank=2, loss="orthohash")
    hasher.train()
    assert hasher.head.training and not hasher.visual.training
    assert not any(m.training for m in hasher.visual.modules())
    hasher.eval()
    assert not hasher.head.training
    fft = build_hasher("fft", fresh_tiny(), CLASSES, 8).train()
    assert fft.visual.training


def test_encode_uses_running_statistics_whatever_the_mode():
    hasher = build_hasher("lb", fresh_tiny(), CLASSES, 8, loss="orthohash")  # BatchNorm in the head
    x = images(6)
    with torch.no_grad():
        hasher(x)  # one train-mode pass moves the running statistics away from their init
    train_mode_codes = hasher.encode(x)
    assert hasher.training and hasher.head.training  # restored
    hasher.eval()
    assert torch.equal(train_mode_codes, hasher.encode(x))
    hasher.train()
    with torch.no_grad():
        assert not torch.equal(sign_of(hasher(x)), train_mode_codes)  # batch statistics give other codes


def sign_of(u):
    return torch.where(u >= 0, 1.0, -1.0)


def test_encode_autocast_and_api_attributes():
    hasher = build_hasher("kalahash", fresh_tiny(), CLASSES, 12, rank=2)
    hasher.begin_training(train_labels())
    x = images()
    codes = hasher.encode(x)
    assert codes.shape == (4, 12) and codes.dtype == torch.float32
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    assert hasher.training  # encode restores the mode
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u = hasher(x)
        loss, parts = hasher.loss_on_batch(u, torch.eye(4), torch.arange(4))
    assert loss.dtype == torch.float32 and math.isfinite(parts["loss"])
    assert (u.abs() < 1).all()
    assert (hasher.bits, hasher.num_classes, hasher.method, hasher.classnames) == (12, 4, "kalahash", CLASSES)
    assert (
        hasher.hparams["rank"] == 2 and hasher.hparams["loss"] == "dpsh" and hasher.hparams["kiddo"] is True
    )


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("dsh", CLASSES, 16), {}, r"unknown method 'dsh'.*'lb', 'fft', 'lora', 'clora', 'kalahash'"),
        (("lb", CLASSES, 16), {"loss": "dch"}, r"unknown loss 'dch'.*'dpsh'"),
        (("lb", CLASSES, 16), {"lr": 0.1}, r"unknown hparam\(s\) 'lr'.*'rank'"),
        (("lb", CLASSES, 0), {}, "bits must be a positive int"),
        (("lb", CLASSES, 2.5), {}, "bits must be a positive int"),
        (("lb", CLASSES, True), {}, "bits must be a positive int"),
        (("lb", [], 16), {}, "classnames is empty"),
        (("lb", ["a", "a"], 16), {}, "duplicates 'a'"),
        (("clora", CLASSES, 16), {"rank": 5}, r"rank 5 exceeds the number of classes 4.*1\.\.4"),
        (("clora", CLASSES, 16), {"rank": 0}, "rank must be a positive int"),
        (("clora", CLASSES, 16), {"rank": 2, "targets": ["z"]}, "unknown target 'z'"),
        (("clora", CLASSES, 16), {"rank": 2, "blocks": [5]}, "block index 5 is out of range"),
        (("lb", CLASSES, 16), {"adapter": "clora"}, "use method 'clora' or 'kalahash'"),
        (("lb", CLASSES, 16), {"loss": "csq", "loss_options": {"eta": 1}}, r"unknown loss_options 'eta'"),
        (("kalahash", CLASSES, 16), {"rank": 2, "kiddo_alpha": 0}, "kiddo_alpha must be > 0"),
        (("kalahash", CLASSES, 16), {"rank": 2, "selection": "top"}, r"unknown selection 'top'.*'topr'"),
    ],
)
def test_build_hasher_bad_input(tiny_backbone, args, kwargs, message):
    method, classnames, bits = args
    with pytest.raises(ValueError, match=message):
        build_hasher(method, tiny_backbone, classnames, bits, **kwargs)


def test_backbone_serves_one_hasher_and_loss_state_is_required():
    backbone = fresh_tiny()
    hasher = build_hasher("clora", backbone, CLASSES, 8, rank=2, loss="csq")
    with pytest.raises(ValueError, match="already serves a hasher"):
        build_hasher("lb", backbone, CLASSES, 8)
    with pytest.raises(RuntimeError, match="begin_training"):
        hasher.loss_on_batch(hasher(images()), torch.eye(4), torch.arange(4))
    with pytest.raises(ValueError, match="train_labels has 3 columns"):
        hasher.begin_training(np.eye(3))


def test_class_names_a_tiny_clip_never_learned_are_warned_about():
    """CIFAR-10's names with tiny-objects-m: near-identical text rows, named before any training."""
    import warnings

    from kalahash.backbones import UnknownWordsWarning, load_backbone
    from kalahash.worlds.objects10 import CLASSNAMES

    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with pytest.warns(UnknownWordsWarning, match=r"never learned: airplane, automobile, bird, .*, truck\."):
        build_hasher("kalahash", load_backbone("tiny-objects-m"), cifar, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownWordsWarning)
        build_hasher("lb", load_backbone("tiny-objects-m"), cifar, 16)  # LB does not read the class text
        build_hasher("kalahash", load_backbone("tiny-objects-m"), list(CLASSNAMES), 16)
        build_hasher("zeroshot", load_backbone("tiny"), cifar, 16)  # a full (random) vocabulary
    with pytest.warns(UnknownWordsWarning, match=r"never learned: fishing\."):
        build_hasher("zeroshot", load_backbone("tiny-objects-m"), ["house", "fishing boat"], 16)


def test_one_method_registry():
    """The run configs, the CLI and the tables read the factory's registry: one list of methods."""
    from kalahash.experiments import METHODS as RUN_METHODS
    from kalahash.experiments import ExperimentConfig
    from kalahash.hashing import METHOD_LABELS, METHODS, uses_knowledge

    assert tuple(METHODS) == RUN_METHODS and set(METHODS) <= set(METHOD_LABELS)
    readers = [m for m in METHODS if uses_knowledge(m, {})]
    assert readers == ["clora", "kalahash", "zeroshot"]
    with pytest.raises(ValueError, match=r"methods that read K \(clora, kalahash, zeroshot, or any"):
        ExperimentConfig(method="lora", knowledge="permuted")
