import numpy as np
import pytest
import xarray as xr

from lingua_ray.store import ActivationStore, GridSpec, StoreError, cell_checksum


def spec(checkpoints=("final",), languages=("en", "fr"), S=5, L=3, F=4, stats=("mean", "last"), fp="w1",
         identity=None, texts=None):
    uids = [f"u{i}" for i in range(S)]
    return GridSpec(
        checkpoints=[{"label": c, "revision": None, "step": i, "fingerprint": {"w": fp, "c": c}}
                     for i, c in enumerate(checkpoints)],
        languages=list(languages), unit_ids=uids,
        texts=texts or {lang: [f"{lang} text {i}" for i in range(S)] for lang in languages},
        n_layers=L, n_neurons=F, statistics=list(stats), identity=identity or {"model": "tiny", "max_tokens": 8},
        config={"run": {"name": "t"}},
    )


def fake(ck, lang, s0, s1, L=3, F=4, stats=("mean", "last")):
    seed = hash((ck, lang, s0)) % 2**32
    rng = np.random.default_rng(seed)
    return {s: rng.normal(size=(s1 - s0, L, F)).astype(np.float32) for s in stats}, np.arange(s1 - s0) + 1


def fill(store, only=None):
    for ck, lang, s0, s1 in list(store.missing_blocks()):
        if only is not None and (ck, lang, s0) not in only:
            continue
        stats, ntok = fake(ck, lang, s0, s1)
        store.write_block(ck, lang, s0, stats, ntok)


def test_create_write_read_roundtrip(tmp_path):
    st = ActivationStore.create_or_extend(str(tmp_path / "s.zarr"), spec(), unit_block=2)
    assert st.shape == (1, 2, 5, 3, 4)
    assert st.blocks() == [(0, 2), (2, 4), (4, 5)]
    assert len(list(st.missing_blocks())) == 6
    fill(st)
    assert st.done().all() and not list(st.missing_blocks())
    stats, _ = fake("final", "fr", 2, 4)
    np.testing.assert_array_equal(st.read_cells("final", "fr", 2, 4, "last"), stats["last"])
    layer1 = st.read_layer("final", 1)
    assert layer1.shape == (2, 5, 4)
    np.testing.assert_array_equal(layer1[1, 2:4], stats["mean"][:, 1])
    assert st.texts("fr")[3] == "fr text 3"
    assert st.verify_block("final", "fr", 2, 4)


def test_xarray_named_dimensions(tmp_path):
    st = ActivationStore.create_or_extend(str(tmp_path / "s.zarr"), spec(), unit_block=2)
    fill(st)
    ds = xr.open_zarr(str(tmp_path / "s.zarr"), consolidated=False)
    assert ds["activations"].dims == ("checkpoint", "language", "unit", "layer", "neuron")
    assert list(ds["language"].values) == ["en", "fr"]
    assert ds["text"].sel(language="en", unit="u1").item() == "en text 1"
    v = ds["activations"].sel(checkpoint="final", language="en", unit="u0", layer=2).values
    np.testing.assert_array_equal(v, fake("final", "en", 0, 2)[0]["mean"][0, 2])


def test_xarray_consolidated_with_step_coordinates(tmp_path, recwarn):
    import warnings

    st = ActivationStore.create_or_extend(str(tmp_path / "s.zarr"), spec(checkpoints=("a", "b")), unit_block=2)
    fill(st)
    st.consolidate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "missing consolidated metadata" warning
        ds = xr.open_zarr(str(tmp_path / "s.zarr"))
    assert {"checkpoint_step", "checkpoint_revision", "neuron"} <= set(ds.coords)
    assert list(ds["checkpoint_step"].values) == [0, 1]
    by_step = ds["activations"].swap_dims(checkpoint="checkpoint_step").sel(checkpoint_step=1)
    np.testing.assert_array_equal(by_step.sel(language="fr", unit="u2", layer=0).values,
                                  fake("b", "fr", 2, 4)[0]["mean"][0, 0])
    # Growth after consolidating: lingua_ray itself never reads the stale snapshot.
    grown = ActivationStore.create_or_extend(str(tmp_path / "s.zarr"), spec(checkpoints=("a", "b"),
                                             languages=("en", "fr", "zh")), unit_block=2)
    assert grown.shape[1] == 3 and len(list(grown.missing_blocks())) == 6


def test_partial_block_write_refused(tmp_path):
    st = ActivationStore.create_or_extend(str(tmp_path / "s.zarr"), spec(), unit_block=2)
    stats, ntok = fake("final", "en", 1, 2)
    with pytest.raises(StoreError, match="whole block"):
        st.write_block("final", "en", 1, stats, ntok)


def test_non_finite_refused_names_cell(tmp_path):
    st = ActivationStore.create_or_extend(str(tmp_path / "s.zarr"), spec(), unit_block=2)
    stats, ntok = fake("final", "en", 2, 4)
    stats["mean"][1, 2, 0] = np.inf
    with pytest.raises(StoreError, match=r"language=en unit=u3 layer=2"):
        st.write_block("final", "en", 2, stats, ntok)
    assert not st.done().any()


def test_resume_only_missing_and_identical(tmp_path):
    a = ActivationStore.create_or_extend(str(tmp_path / "a.zarr"), spec(), unit_block=2)
    fill(a)
    b = ActivationStore.create_or_extend(str(tmp_path / "b.zarr"), spec(), unit_block=2)
    fill(b, only={("final", "en", 0), ("final", "fr", 4)})  # "interrupted"
    b = ActivationStore.create_or_extend(str(tmp_path / "b.zarr"), spec(), unit_block=2)
    todo = list(b.missing_blocks())
    assert len(todo) == 4 and ("final", "en", 0, 2) not in todo
    fill(b)
    for name in ("activations", "activations_last", "n_tokens", "cell_crc32"):
        np.testing.assert_array_equal(a.group[name][:], b.group[name][:])


def test_mismatch_refused_without_changes(tmp_path):
    p = str(tmp_path / "s.zarr")
    st = ActivationStore.create_or_extend(p, spec(), unit_block=2)
    fill(st)
    before = st.group["activations"][:]
    with pytest.raises(StoreError, match="checkpoint 'final' was recorded from a different model"):
        ActivationStore.create_or_extend(p, spec(fp="w2"), unit_block=2)
    with pytest.raises(StoreError, match=r"identity\.max_tokens: 8 in the store, 9 in this run"):
        ActivationStore.create_or_extend(p, spec(identity={"model": "tiny", "max_tokens": 9}), unit_block=2)
    long = {"model": "tiny" * 60, "max_tokens": 8, "zz_last": 1}
    with pytest.raises(StoreError, match=r"identity\.zz_last: <absent>|identity\.model"):
        ActivationStore.create_or_extend(p, spec(identity=long), unit_block=2)  # the differing field in full
    with pytest.raises(StoreError, match="language 'fr' was recorded from different texts"):
        t = {lang: [f"{lang} text {i}" for i in range(5)] for lang in ("en", "fr")}
        t["fr"][2] = "changed"
        ActivationStore.create_or_extend(p, spec(texts=t), unit_block=2)
    with pytest.raises(StoreError, match="units"):
        ActivationStore.create_or_extend(p, spec(S=6), unit_block=2)
    with pytest.raises(StoreError, match="n_layers"):
        ActivationStore.create_or_extend(p, spec(L=4), unit_block=2)
    np.testing.assert_array_equal(ActivationStore(p).group["activations"][:], before)


def test_growth_keeps_finished_data(tmp_path):
    p = str(tmp_path / "s.zarr")
    st = ActivationStore.create_or_extend(p, spec(), unit_block=2)
    fill(st)
    before = st.group["activations"][:]
    st2 = ActivationStore.create_or_extend(p, spec(checkpoints=("final", "step2"), languages=("en", "fr", "zh")),
                                           unit_block=2)
    assert st2.checkpoints == ["final", "step2"] and st2.languages == ["en", "fr", "zh"]
    np.testing.assert_array_equal(st2.group["activations"][:1, :2], before)
    todo = list(st2.missing_blocks())
    assert {(c, lang) for c, lang, *_ in todo} == {("final", "zh"), ("step2", "en"), ("step2", "fr"), ("step2", "zh")}
    fill(st2)
    assert st2.done().all()
    assert st2.group["checkpoint_step"][:].tolist() == [0, 1]


def test_verify_detects_corruption(tmp_path):
    st = ActivationStore.create_or_extend(str(tmp_path / "s.zarr"), spec(), unit_block=2)
    fill(st)
    st.group["activations"][0, 0, 0, 0, 0] = 123.0  # torn / tampered data
    assert not st.verify_block("final", "en", 0, 2)
    assert ("final", "en", 0, 2) in list(st.missing_blocks(verify=True))
    assert cell_checksum([np.zeros((1, 2))]) != cell_checksum([np.ones((1, 2))])


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="no activation store"):
        ActivationStore(str(tmp_path / "nope.zarr"))


# ---- damaged data and write order (issue 8) ----

def _filled(tmp_path, B=2):
    st = ActivationStore.create_or_extend(str(tmp_path / "s.zarr"), spec(), unit_block=B)
    fill(st)
    assert list(st.missing_blocks()) == []
    return st


def _shard(tmp_path, st, stat="mean", k=0, b=1):
    return tmp_path / "s.zarr" / st.shard_files(0, k, b)[st.statistics.index(stat)]


@pytest.mark.parametrize("damage", ["truncate", "delete", "grow"])
def test_damaged_shard_is_found_without_verify(tmp_path, damage):
    st = _filled(tmp_path)
    f = _shard(tmp_path, st)
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        f.unlink()
    else:
        f.write_bytes(data + b"\0")
    assert list(st.missing_blocks()) == [("final", "en", 2, 4)]


def test_same_size_corruption_needs_verify_and_never_crashes(tmp_path):
    st = _filled(tmp_path)
    f = _shard(tmp_path, st)
    data = bytearray(f.read_bytes())
    data[5] ^= 0xFF  # same size: only the checksum can tell
    f.write_bytes(bytes(data))
    assert list(st.missing_blocks()) == []
    assert list(st.missing_blocks(verify=True)) == [("final", "en", 2, 4)]
    f.write_bytes(bytes(data[: len(data) // 3]))  # torn: verify must report it, not raise
    assert list(st.missing_blocks(verify=True)) == [("final", "en", 2, 4)]


def test_reading_damaged_data_names_cell_file_and_repair(tmp_path):
    st = _filled(tmp_path)
    f = _shard(tmp_path, st, k=1, b=0)
    f.write_bytes(f.read_bytes()[:10])
    with pytest.raises(StoreError) as err:
        st.read_layer("final", 1)
    msg = str(err.value)
    assert "language=fr" in msg and "u0..u1" in msg and "activations/c/0/1/0/0/0" in msg
    assert "store.verify_on_resume=true" in msg


def test_repair_rewrites_only_the_damaged_block(tmp_path):
    st = _filled(tmp_path)
    before = st.group["activations"][:]
    f = _shard(tmp_path, st)
    f.write_bytes(f.read_bytes()[:7])
    for blk in st.missing_blocks():
        st.invalidate_block(*blk)
    assert not st.done()[0, 0, 2:4].any() and st.done()[0, 0, :2].all()
    fill(st)
    np.testing.assert_array_equal(st.group["activations"][:], before)
    assert list(st.missing_blocks(verify=True)) == []


def test_write_order_data_then_tokens_then_markers(tmp_path, monkeypatch):
    st = ActivationStore.create_or_extend(str(tmp_path / "s.zarr"), spec(), unit_block=2)
    order = []
    import zarr

    real = zarr.Array.__setitem__

    def spy(self, sel, value):
        order.append(self.basename)
        return real(self, sel, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", spy)
    stats, ntok = fake("final", "en", 0, 2)
    st.write_block("final", "en", 0, stats, ntok)
    assert order.index("cell_crc32") == len(order) - 1, order  # markers strictly last
    assert max(order.index("activations"), order.index("activations_last")) < order.index("n_tokens")
    assert order.index("n_tokens") < order.index("shard_bytes") < order.index("cell_crc32")


def test_partly_marked_block_is_not_done(tmp_path):
    st = _filled(tmp_path)
    st.group["cell_crc32"][0, 1, 3] = -1  # one cell of block (2, 4) lost its marker
    assert list(st.missing_blocks()) == [("final", "fr", 2, 4)]


def test_criterion_masks_beside_key_mask(tmp_path):
    """mask_<name> (checkpoint, language, layer, neuron) with its settings and per-checkpoint info;
    grows with the checkpoints; bad shapes and dtypes refused; reading a missing one says what to run."""
    path = str(tmp_path / "s.zarr")
    st = ActivationStore.create_or_extend(path, spec(checkpoints=("a", "b")), unit_block=2)
    rng = np.random.default_rng(0)
    masks = {ck: rng.random((2, 3, 4)) < 0.3 for ck in ("a", "b")}
    for ck in ("a", "b"):
        st.write_criterion_mask(ck, "lape", masks[ck], {"top_rate": 0.1}, {"lam": np.float64(0.5), "n": 3})
    again = ActivationStore(path)
    for ck in ("a", "b"):
        np.testing.assert_array_equal(again.read_criterion_mask(ck, "lape"), masks[ck])
    assert again.criterion_settings("lape") == {"top_rate": 0.1} and again.criterion_settings("lna") is None
    arr = again.group["mask_lape"]
    assert arr.metadata.dimension_names == ("checkpoint", "language", "layer", "neuron")
    assert arr.attrs["info"]["b"] == {"lam": 0.5, "n": 3}
    with pytest.raises(StoreError, match="no mask_lna: add lna to reduce.criteria"):
        again.read_criterion_mask("a", "lna")
    with pytest.raises(StoreError, match=r"must be bool \(2, 3, 4\)"):
        st.write_criterion_mask("a", "lape", masks["a"].astype(np.int8), {})
    with pytest.raises(StoreError, match=r"must be bool \(2, 3, 4\)"):
        st.write_criterion_mask("a", "lape", masks["a"][:, :2], {})
    fill(st)
    np.testing.assert_array_equal(st.read_layer_features("b", 2, 1, 3), st.read_layer("b", 2)[:, :, 1:3])


# ---------------------------------------------------------------- compact storage dtype (float16)


def test_float16_store_reads_float32_of_the_rounded_values_and_verifies(tmp_path):
    st = ActivationStore.create_or_extend(str(tmp_path / "h.zarr"), spec(), unit_block=2, dtype="float16")
    assert st.dtype == "float16" and st.group["activations"].dtype == np.float16
    fill(st)
    stats, _ = fake("final", "fr", 2, 4)
    got = st.read_cells("final", "fr", 2, 4, "mean")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, stats["mean"].astype(np.float16).astype(np.float32))
    assert not np.array_equal(got, stats["mean"])  # it really is rounded
    for read in (st.read_layer("final", 1), st.read_layer_block("final", 1, 0, 2),
                 st.read_layer_features("final", 1, 0, 2)):
        assert read.dtype == np.float32
    assert all(st.verify_block(*b) for b in [("final", lang, s0, s1) for lang in ("en", "fr") for s0, s1 in st.blocks()])
    assert not list(st.missing_blocks(verify=True))


def test_store_keeps_its_dtype(tmp_path):
    path = str(tmp_path / "h.zarr")
    ActivationStore.create_or_extend(path, spec(), unit_block=2, dtype="float16")
    with pytest.raises(StoreError, match=r"stores its statistics as float16.*store.dtype=float32.*keep store.dtype=float16"):
        ActivationStore.create_or_extend(path, spec(), unit_block=2, dtype="float32")
    assert ActivationStore.create_or_extend(str(tmp_path / "f.zarr"), spec(), unit_block=2).dtype == "float32"


def test_float16_overflow_is_refused_naming_the_cell(tmp_path):
    st = ActivationStore.create_or_extend(str(tmp_path / "h.zarr"), spec(), unit_block=2, dtype="float16")
    stats, ntok = fake("final", "en", 0, 2)
    stats["last"][1, 2, 0] = 1e6
    with pytest.raises(StoreError, match=r"last at checkpoint=final language=en unit=u1 layer=2 exceeds float16's "
                                         r"range.*store.dtype=float32"):
        st.write_block("final", "en", 0, stats, ntok)
    assert not st.done()[0, 0, :2].any()  # nothing marked done
