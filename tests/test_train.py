import numpy as np
import pytest
import torch
from helpers import fresh_tiny

from kalahash.backbones import load_backbone
from kalahash.cache import PrefixCache, images_fingerprint
from kalahash.checkpoints import load_checkpoint, restore_hasher, save_checkpoint
from kalahash.data import ImageList, RetrievalData
from kalahash.hashing import build_hasher
from kalahash.metrics import mean_average_precision
from kalahash.train import (
    TrainConfig,
    TrainResult,
    batch_source,
    check_finite_loss,
    check_training_input,
    encode,
    evaluate,
    finish_epoch,
    fit,
    make_optimizer,
    restore_training_state,
    save_training_state,
    train_epoch,
)

CLASSES = ["red circle", "blue square", "green triangle"]


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three visibly different classes: a bright channel per class plus noise."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    images = rng.integers(0, 60, size=(n, 32, 32, 3), dtype=np.uint8)
    images[np.arange(n), :, :, y] += 180
    labels = np.eye(3, dtype=np.uint8)[y]
    return images, labels


@pytest.fixture(scope="module")
def data() -> RetrievalData:
    qi, ql = _images(12, 1)
    ti, tl = _images(24, 2)
    di, dl = _images(48, 3)
    return RetrievalData(
        "toy",
        CLASSES,
        ImageList(qi, ql, [f"q{i}" for i in range(12)]),
        ImageList(ti, tl, [f"t{i}" for i in range(24)]),
        ImageList(di, dl, [f"d{i}" for i in range(48)]),
        topk=None,
    )


def _hasher(method: str = "kalahash", seed: int = 0, **hp):
    backbone = fresh_tiny(seed)
    torch.manual_seed(seed + 100)
    return build_hasher(method, backbone, CLASSES, 8, rank=2, **hp)


def _state(hasher) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in hasher.trained_state().items()}


def test_fit_trains_and_reports_history(data):
    hasher = _hasher()
    before = _state(hasher)
    result = fit(hasher, data.train, epochs=3, progress=False)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert all(np.isfinite(row["loss"]) for row in result.history)
    after = _state(hasher)
    for key in ("head.linear.weight", "visual.knowledge_pool.F.weight", "anchors.linear.weight"):
        assert not torch.equal(before[key], after[key]), key
    assert not torch.equal(before["criterion.B"], after["criterion.B"])  # the B-step ran
    assert int(hasher.epochs_done) == 3


def test_cached_and_naive_training_agree(data, tmp_path):
    naive, cached = _hasher(), _hasher()
    cache = PrefixCache(tmp_path / "cache")
    fit(naive, data.train, epochs=2, progress=False)
    fit(cached, data.train, epochs=2, cache=cache, progress=False)
    for key, value in _state(naive).items():
        torch.testing.assert_close(_state(cached)[key], value, atol=1e-4, rtol=1e-4, msg=key)
    codes_naive = encode(naive, data.database, progress=False)
    codes_cached = encode(cached, data.database, cache=cache, progress=False)
    assert codes_naive.dtype == np.int8 and codes_naive.shape == (48, 8)
    assert (codes_naive == codes_cached).mean() > 0.99


def test_prefix_cache_is_reused_and_keyed(data, tmp_path):
    hasher = _hasher()
    cache = PrefixCache(tmp_path)
    start = hasher.trainable_from
    assert start == hasher.num_blocks - 1  # adapters in the last block only
    first = cache.tokens(hasher, data.database, start, progress=False)
    again = cache.tokens(hasher, data.database, start, progress=False)
    assert (cache.misses, cache.hits) == (1, 1)
    torch.testing.assert_close(first, again)
    with torch.no_grad():
        direct = hasher.prefix_tokens(
            torch.stack([data.database.with_transform(hasher.backbone.preprocess)[i][0] for i in range(4)]),
            start,
        )
    torch.testing.assert_close(first[:4], direct, atol=1e-5, rtol=1e-5)
    other = data.database.subset(np.arange(10))
    assert cache.key(hasher, other, start) != cache.key(hasher, data.database, start)
    assert cache.key(hasher, data.database, start - 1) != cache.key(hasher, data.database, start)
    assert len(list(tmp_path.glob("*.npy"))) == 1


def test_fft_never_uses_the_cache(data, tmp_path):
    hasher = _hasher("fft")
    cache = PrefixCache(tmp_path)
    assert hasher.trainable_from == 0
    fit(hasher, data.train, epochs=1, cache=cache, progress=False)
    encode(hasher, data.query, cache=cache, progress=False)
    assert cache.misses == cache.hits == 0


def test_resume_reaches_the_same_result(data, tmp_path, monkeypatch):
    full = _hasher()
    fit(full, data.train, epochs=4, progress=False)

    killed = _hasher()
    ckpt = tmp_path / "run.ckpt"
    calls = {"n": 0}
    original = killed.end_epoch

    def end_epoch_then_die():
        original()
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed after epoch 2's checkpoint, during epoch 3's bookkeeping

    monkeypatch.setattr(killed, "end_epoch", end_epoch_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(killed, data.train, epochs=4, checkpoint=ckpt, progress=False)
    assert load_checkpoint(ckpt)["epoch"] == 2

    resumed = _hasher()
    result = fit(resumed, data.train, epochs=4, checkpoint=ckpt, resume=True, progress=False)
    assert result.resumed_from_epoch == 2 and len(result.history) == 4
    for key, value in _state(full).items():
        torch.testing.assert_close(_state(resumed)[key], value, atol=1e-6, rtol=1e-6, msg=key)


def test_resume_refuses_other_settings(data, tmp_path):
    ckpt = tmp_path / "run.ckpt"
    fit(_hasher(), data.train, epochs=1, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="training settings"):
        fit(_hasher(), data.train, epochs=1, lr=0.5, checkpoint=ckpt, resume=True, progress=False)


def test_resume_needs_a_checkpoint_and_refuses_other_classes(data, tmp_path):
    with pytest.raises(ValueError, match="resume=True needs checkpoint="):
        fit(_hasher(), data.train, epochs=1, resume=True, progress=False)
    ckpt = tmp_path / "run.ckpt"
    fit(_hasher(), data.train, epochs=1, checkpoint=ckpt, progress=False)
    two = data.train.subset(np.flatnonzero(data.train.labels[:, 2] == 0))
    two = ImageList(two.images, two.labels[:, :2], two.ids)
    other = build_hasher("kalahash", fresh_tiny(0), CLASSES[:2], 16, rank=1)
    with pytest.raises(ValueError, match=r"trained on a data set \(3 classes: red circle.*labels 2 wide\)"):
        fit(other, two, epochs=1, checkpoint=ckpt, resume=True, progress=False)


def test_a_finished_run_resumes_to_itself(data, tmp_path):
    """The last checkpoint of a run without optimizer state (as run_experiment leaves it) trains no further."""
    ckpt = tmp_path / "run.ckpt"
    done = _hasher()
    result = fit(done, data.train, epochs=2, checkpoint=ckpt, progress=False)
    payload = load_checkpoint(ckpt)
    save_checkpoint(
        ckpt,
        done,
        **{k: v for k, v in payload.items() if k in ("epoch", "history", "seconds", "train_config")},
    )
    again = _hasher()
    resumed = fit(again, data.train, epochs=2, checkpoint=ckpt, resume=True, progress=False)
    assert resumed.resumed_from_epoch == 2 and resumed.history == result.history
    for key, value in _state(done).items():
        torch.testing.assert_close(_state(again)[key], value, msg=key)
    save_checkpoint(
        ckpt, done, **{**{k: payload[k] for k in ("history", "seconds", "train_config")}, "epoch": 1}
    )
    with pytest.raises(ValueError, match="holds no optimizer state"):
        fit(_hasher(), data.train, epochs=2, checkpoint=ckpt, resume=True, progress=False)


def test_non_finite_loss_names_epoch_and_step(data, monkeypatch):
    hasher = _hasher("lb")
    original = hasher.loss_on_batch
    calls = {"n": 0}

    def loss_on_batch(u, labels, idx):
        calls["n"] += 1
        loss, parts = original(u, labels, idx)
        return (loss * float("nan"), parts) if calls["n"] == 5 else (loss, parts)

    monkeypatch.setattr(hasher, "loss_on_batch", loss_on_batch)
    with pytest.raises(FloatingPointError, match=r"nan at epoch 2, step 2"):
        fit(hasher, data.train, epochs=3, progress=False)  # 24 images / batch 8 = 3 steps an epoch


def test_bad_training_input(data):
    with pytest.raises(ValueError, match="fewer than batch_size=8"):
        fit(_hasher(), data.train.subset(np.arange(5)), progress=False)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        fit(_hasher(), data.train, epochs=0, progress=False)
    with pytest.raises(ValueError, match="lr must be positive"):
        TrainConfig(lr=0)
    wide = ImageList(data.train.images, np.eye(4, dtype=np.uint8)[np.arange(24) % 4])
    with pytest.raises(ValueError, match="4 columns, the hasher 3 classes"):
        fit(_hasher(), wide, progress=False)


def test_checkpoint_holds_only_trained_parts_and_checks_the_backbone(data, tmp_path):
    hasher = _hasher()
    fit(hasher, data.train, epochs=1, progress=False)
    path = save_checkpoint(tmp_path / "h.ckpt", hasher)
    payload = load_checkpoint(path)
    n_saved = sum(v.numel() for v in payload["trained_state"].values())
    n_backbone = sum(p.numel() for p in hasher.backbone.model.parameters())
    assert n_saved < n_backbone / 10
    assert not any(k.startswith("visual.transformer.resblocks.0.") for k in payload["trained_state"])
    assert payload["backbone"] == {
        "name": "tiny",
        "pretrained": "random",
        "fingerprint": hasher.backbone.fingerprint,
    }

    torch.manual_seed(0)
    same = load_backbone("tiny")  # same seed as _hasher(seed=0): same weights
    restored = restore_hasher(payload, same)
    np.testing.assert_array_equal(
        encode(restored, data.query, progress=False), encode(hasher, data.query, progress=False)
    )

    torch.manual_seed(7)
    with pytest.raises(ValueError, match=r"fingerprint.*Load the same backbone weights"):
        restore_hasher(payload, load_backbone("tiny"))


def test_corrupt_and_foreign_checkpoints(tmp_path):
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(broken)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not a kalahash checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_evaluate_scores_codes_with_the_protocol(data, tmp_path):
    hasher = _hasher("lb")
    fit(hasher, data.train, epochs=2, progress=False)
    scores = evaluate(hasher, data, cache=PrefixCache(tmp_path), progress=False)
    expected = mean_average_precision(
        scores["query_codes"], data.query.labels, scores["database_codes"], data.database.labels
    )
    assert scores["map"] == pytest.approx(expected)
    assert scores["map_topk"] == 48 and scores["ties"] == "index"
    assert 0 <= scores["p_at_100"] <= 1


# ----------------------------------------------------------------------------------------------------------
# The steps of fit, one at a time


def _ready(train_set: ImageList, method: str = "kalahash", **config):
    """A hasher with its loss state allocated, its optimizer, scaler and settings, as fit sets them up."""
    hasher = _hasher(method)
    hasher.begin_training(train_set.labels)
    cfg = TrainConfig(**{"epochs": 2, **config})
    return hasher, *make_optimizer(hasher, cfg), cfg


def test_check_training_input_names_the_problem(data):
    hasher, _, _, config = _ready(data.train)
    check_training_input(hasher, data.train, config)
    with pytest.raises(ValueError, match="5 images, fewer than batch_size=8"):
        check_training_input(hasher, data.train.subset(np.arange(5)), config)
    check_training_input(hasher, data.train.subset(np.arange(5)), TrainConfig(drop_last=False))
    wide = ImageList(data.train.images, np.eye(4, dtype=np.uint8)[np.arange(24) % 4])
    with pytest.raises(ValueError, match="4 columns, the hasher 3 classes"):
        check_training_input(hasher, wide, config)


def test_make_optimizer_covers_the_trainable_parameters(data):
    hasher, optimizer, scaler, _ = _ready(data.train, lr=0.05, momentum=0.5)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in params} == {id(p) for p in hasher.trainable_parameters()}
    assert optimizer.param_groups[0]["lr"] == 0.05 and optimizer.param_groups[0]["momentum"] == 0.5
    assert not scaler.is_enabled()  # fp32 on the CPU: nothing to scale


def test_batch_source_cached_and_naive_give_the_same_outputs(data, tmp_path):
    hasher, *_ = _ready(data.train)
    naive = batch_source(hasher, data.train, None, progress=False)
    cached = batch_source(hasher, data.train, PrefixCache(tmp_path), progress=False)
    idx = torch.tensor([0, 5, 7])
    np.testing.assert_array_equal(naive.labels.numpy(), data.train.labels.astype(np.float32))
    assert naive.inputs(idx).shape == (3, 3, 32, 32) and cached.inputs(idx).dim() == 3  # pixels vs tokens
    with torch.no_grad():
        u_naive, u_cached = naive.forward(naive.inputs(idx)), cached.forward(cached.inputs(idx))
    assert u_naive.shape == (3, 8)
    torch.testing.assert_close(u_cached, u_naive, atol=1e-5, rtol=1e-5)


def test_check_finite_loss_names_epoch_step_and_method():
    check_finite_loss(torch.tensor(0.25), 1, 1, "lb")
    with pytest.raises(FloatingPointError, match=r"became nan at epoch 3, step 7 \(kalahash\)"):
        check_finite_loss(torch.tensor(float("nan")), 3, 7, "kalahash")
    with pytest.raises(FloatingPointError, match=r"became inf at epoch 1, step 2"):
        check_finite_loss(torch.tensor(float("inf")), 1, 2, "lb")


def test_train_epoch_steps_every_batch_and_averages_the_loss(data, monkeypatch):
    hasher, optimizer, scaler, config = _ready(data.train)
    source = batch_source(hasher, data.train, None, progress=False)
    before = _state(hasher)
    seen = []
    original = hasher.loss_on_batch

    def loss_on_batch(u, labels, idx):
        loss, parts = original(u, labels, idx)
        seen.append((loss.item(), idx.tolist()))
        return loss, parts

    monkeypatch.setattr(hasher, "loss_on_batch", loss_on_batch)
    means = train_epoch(hasher, source, optimizer, scaler, config, epoch=0)
    assert len(seen) == 3  # 24 images / batch 8
    assert sorted(i for _, idx in seen for i in idx) == list(range(24))  # each image once, shuffled
    assert means["loss"] == pytest.approx(sum(loss for loss, _ in seen) / 3)
    assert {"sim", "ali", "qua"} <= set(means)
    after = _state(hasher)
    assert not torch.equal(before["head.linear.weight"], after["head.linear.weight"])
    assert torch.equal(before["criterion.B"], after["criterion.B"])  # the B-step is not part of an epoch
    train_epoch(hasher, source, optimizer, scaler, config, epoch=1)
    assert [idx for _, idx in seen[3:]] != [idx for _, idx in seen[:3]]  # another epoch, another order


def test_train_epoch_stops_at_a_non_finite_loss(data, monkeypatch):
    hasher, optimizer, scaler, config = _ready(data.train, "lb")
    source = batch_source(hasher, data.train, None, progress=False)
    original = hasher.loss_on_batch
    states = []

    def loss_on_batch(u, labels, idx):
        states.append(_state(hasher))  # the weights each step starts from
        loss, parts = original(u, labels, idx)
        return (loss * float("inf"), parts) if len(states) == 2 else (loss, parts)

    monkeypatch.setattr(hasher, "loss_on_batch", loss_on_batch)
    with pytest.raises(FloatingPointError, match="at epoch 5, step 2"):
        train_epoch(hasher, source, optimizer, scaler, config, epoch=4)
    assert len(states) == 2
    assert not torch.equal(states[0]["head.linear.weight"], states[1]["head.linear.weight"])  # step 1 applied
    for key, value in _state(hasher).items():  # the bad loss never reached the weights
        assert torch.equal(value, states[1][key]), key


def test_finish_epoch_runs_the_b_step_and_records_the_row(data):
    hasher, *_ = _ready(data.train)
    with pytest.raises(RuntimeError, match="W of the epoch's last forward pass"):
        finish_epoch(hasher, TrainResult(), 0, {})  # no batch yet: no W for the B-step to use
    idx = torch.arange(8)
    labels = torch.from_numpy(data.train.labels[:8].astype(np.float32))
    pixels = torch.stack([data.train.with_transform(hasher.backbone.preprocess)[i][0] for i in range(8)])
    hasher.loss_on_batch(hasher(pixels), labels, idx)
    result = TrainResult(history=[{"epoch": 4, "loss": 1.0}])
    b_before = hasher.criterion.B.clone()
    row = finish_epoch(hasher, result, 4, {"loss": 0.5, "sim": 0.25})
    assert row == {"epoch": 5, "loss": 0.5, "sim": 0.25} and result.history[-1] is row
    assert len(result.history) == 2 and int(hasher.epochs_done) == 1
    assert not torch.equal(hasher.criterion.B, b_before)  # KIDDO's B-step ran
    assert set(hasher.criterion.B.unique().tolist()) <= {-1.0, 1.0}


def test_training_state_saves_and_restores_the_run(data, tmp_path):
    hasher, optimizer, scaler, config = _ready(data.train)
    source = batch_source(hasher, data.train, None, progress=False)
    result = TrainResult(seconds=1.5)
    finish_epoch(hasher, result, 0, train_epoch(hasher, source, optimizer, scaler, config, 0))
    path = save_training_state(tmp_path / "run.ckpt", hasher, optimizer, result, config, epochs_done=1)
    assert load_checkpoint(path)["epoch"] == 1

    fresh, fresh_optimizer, _, _ = _ready(data.train)
    restored = restore_training_state(path, fresh, fresh_optimizer, config)
    assert restored.resumed_from_epoch == 1 and restored.seconds == 1.5 and restored.history == result.history
    for key, value in _state(hasher).items():
        assert torch.equal(_state(fresh)[key], value), key
    saved, loaded = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys() and saved
    for i in saved:  # the momentum carries over
        assert torch.equal(saved[i]["momentum_buffer"], loaded[i]["momentum_buffer"]), i
    with pytest.raises(ValueError, match="training settings"):
        restore_training_state(path, fresh, fresh_optimizer, TrainConfig(epochs=2, lr=0.5))
    torch.manual_seed(7)
    other = build_hasher("kalahash", load_backbone("tiny"), CLASSES, 8, rank=2)
    with pytest.raises(ValueError, match="Load the same backbone weights"):
        restore_training_state(path, other, make_optimizer(other, config)[0], config)


def test_the_images_fingerprint_follows_the_files_and_survives_a_missing_one(tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in paths:
        path.write_bytes(b"x")
    images = ImageList(paths, np.eye(2, dtype=np.uint8), ["a", "b"])
    present = images_fingerprint(images)
    assert images_fingerprint(images) == present
    paths[1].write_bytes(b"xy")  # another size: another content
    grown = images_fingerprint(images)
    assert grown != present
    paths[1].unlink()
    missing = images_fingerprint(images)  # stamped with its error, not a crash
    assert missing not in (present, grown)


def test_the_b_step_receives_the_w_of_the_epochs_last_forward_pass(data, monkeypatch):
    """The release's criterion keeps W = G(K)ᵀ from its forward and its end-of-epoch DCC reads that W,
    computed before the last batch's optimizer step; a W recomputed after the step is another B-step."""
    from kalahash.hashing import kiddo

    hasher = _hasher()
    forward_ws, b_step_ws, after_step_ws = [], [], []
    anchor_matrix, b_step = hasher.anchor_matrix, kiddo.kiddo_b_step

    def recording_anchor_matrix():
        W = anchor_matrix()
        forward_ws.append(W.detach().clone())
        return W

    def recording_b_step(B, W, *args, **kwargs):
        b_step_ws.append((len(forward_ws), W.clone()))
        after_step_ws.append(anchor_matrix().detach().clone())
        return b_step(B, W, *args, **kwargs)

    monkeypatch.setattr(hasher, "anchor_matrix", recording_anchor_matrix)
    monkeypatch.setattr(kiddo, "kiddo_b_step", recording_b_step)
    fit(hasher, data.train, epochs=3, progress=False)
    assert [n for n, _ in b_step_ws] == [3, 6, 9]  # 24 images, batch 8: three forwards per epoch
    for (n, used), after in zip(b_step_ws, after_step_ws, strict=True):
        assert torch.equal(used, forward_ws[n - 1])  # the epoch's last forward pass, bit for bit
        assert not torch.equal(used, after)  # not the anchors after that batch's optimizer step


def _release_loop(hasher, train_set: ImageList, config: TrainConfig) -> list[tuple[torch.Tensor, ...]]:
    """The released training loop's order, written out plainly (notes: KIDDO), with kalahash's loss
    formulas and B-step rule (tested on their own). Returns (W, B) after every epoch."""
    from kalahash.hashing import kiddo_b_step
    from kalahash.hashing.kiddo import l_ali, l_qua
    from kalahash.hashing.losses.dpsh import dpsh_likelihood

    torch.manual_seed(config.seed)
    hasher.begin_training(train_set.labels)
    crit = hasher.criterion
    optimizer = torch.optim.SGD(
        hasher.trainable_parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    view = train_set.with_transform(hasher.backbone.preprocess)
    labels = torch.from_numpy(train_set.labels.astype(np.float32))
    n, size = len(train_set), config.batch_size
    trajectory = []
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))
        for start in range(0, n - n % size, size):  # shuffled, drop last
            idx = order[start : start + size]
            optimizer.zero_grad()
            u = hasher(torch.stack([view[i][0] for i in idx.tolist()]))  # forward: u ...
            W = hasher.anchor_matrix()  # ... and W = G(K)ᵀ
            kept_W = W.detach()  # keep W
            crit.U[:, idx] = u.detach().t()  # and u
            y, b = labels[idx], crit.B[:, idx].t()
            loss = crit.gamma * dpsh_likelihood(u, y) + crit.alpha * l_ali(y, b, W) + crit.beta * l_qua(u, b)
            loss.backward()
            optimizer.step()
        crit.B = kiddo_b_step(crit.B, kept_W, crit.Y, crit.U, crit.alpha, crit.beta, crit.sweeps)  # DCC
        trajectory.append((hasher.anchor_matrix().detach().clone(), crit.B.clone()))
    return trajectory


def test_fit_follows_the_released_loop_bit_for_bit(data, monkeypatch):
    config = TrainConfig(epochs=6)
    # α ≫ β (P = W Y + (β/α) U): W carries the B-step, so a B-step with any other W shows in B at once
    weights = {"kiddo_alpha": 1.0, "kiddo_beta": 0.1}
    expected = _release_loop(_hasher(**weights), data.train, config)

    hasher = _hasher(**weights)
    trajectory, end_epoch = [], hasher.end_epoch

    def recording_end_epoch():
        end_epoch()
        trajectory.append((hasher.anchor_matrix().detach().clone(), hasher.criterion.B.clone()))

    monkeypatch.setattr(hasher, "end_epoch", recording_end_epoch)
    fit(hasher, data.train, config, progress=False)
    assert len(trajectory) == len(expected) == 6
    for epoch, ((W, B), (W_ref, B_ref)) in enumerate(zip(trajectory, expected, strict=True), start=1):
        assert torch.equal(W, W_ref), f"W differs after epoch {epoch}"
        assert torch.equal(B, B_ref), f"B differs after epoch {epoch}"
