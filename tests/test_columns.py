"""Every published column of ``layers``, ``heads`` and ``modes`` against the literal brute
force of tests/brute.py, on a stored run decomposed and published end to end: a planted
``pos_embed``, qkv biases, a planted logit-check capture and a skipped image. The jackknife
columns against the brute force run again without each group's images.

The random controls (split halves, token permutations) are drawn by ``bfd.core.sampling`` from
the images' global indices; the test hands the same draws to the brute force, which computes
the statistics from them literally.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from brute import (
    brute_controls,
    brute_heads,
    brute_jackknife,
    brute_model_check,
    brute_pos_embed_cos,
)
from storebuilder import build_run, planted_logit_check, random_run_arrays

from bfd.core.sampling import half_a, token_permutations
from bfd.storage import TABLE_SCHEMAS, Store, read_table
from bfd.tasks.decompose import DecomposeOptions, assemble_results, decompose_site_layer
from bfd.tasks.publish import publish

SKIPPED, PREFIX, SEED = (2,), 1, 0
L, N, T, D, H = 2, 12, 10, 16, 2
# 8 groups of the 11 decoded images hold 1 or 2 each, and every quarter (n mod 4) keeps an
# image in every replicate, so every interval is defined; the target is not the default
GROUPS, CI_TARGET = 8, 0.05
RTOL = 1e-6  # float32 pass-2 projection (the default compute dtype) against float64 loops
# Stage 1 and its jackknife never meet the projection: float64 sums on every device, observed
# within 1e-14 of the brute force
RTOL_FLOAT64 = 1e-12
STAGE1 = ("ss_total", "pos_split_half_r", "shuffle_frac_pos")
KEYS = {"layers": ("run_id", "model", "site", "layer"), "heads": ("run_id", "model", "layer",
        "head"), "modes": ("run_id", "model", "layer", "head", "mode")}
LAYER_SAMPLE_SIZE = ("ci_halfwidth", "n_images_for_target", "ci_target")
# identities in exact arithmetic: the stored value is rounding noise, held to a bound
ROUNDING = {"ss_identity_residual": 1e-12, "ortho_residual": 1e-12, "logit_residual": 1e-12}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    rng = np.random.default_rng(7)
    acts, qkv, _ = random_run_arrays(26, L=L, N=N, T=T, d=D, H=H)
    bias = rng.normal(size=(L, 3 * D)).astype(np.float32)
    ok = [i for i in range(N) if i not in SKIPPED]
    patches0 = acts["resid"][0][ok][:, PREFIX:].astype(np.float64)
    pos_embed = (patches0.mean(0) + 0.5 * rng.normal(size=patches0.shape[1:]) + 3.0)
    check = planted_logit_check(acts["attn_in"], qkv, bias, H, ok[:2], noise=1e-3)
    check |= {name: check[name].astype(np.float32) for name in ("x", "q", "k")}  # as stored
    store = Store(tmp_path_factory.mktemp("columns"))
    rid = build_run(store, acts, qkv, H, skipped=SKIPPED, pos_embed=pos_embed.astype(np.float32),
                    qkv_bias=bias, logit_check=check)
    opts = DecomposeOptions(seed=SEED, jackknife_groups=GROUPS, ci_target=CI_TARGET)
    parts = [decompose_site_layer(str(store.root), rid, site, layer, opts)
             for site in ("attn_in", "resid") for layer in range(L)]
    publish(str(store.root), rid, assemble_results(parts, {"run_id": rid, **opts.to_dict()}),
            {})
    tables = {t: read_table(store, t).to_pandas() for t in KEYS}
    jackknife = {
        (site, layer): brute_jackknife(
            acts[site][layer][ok][:, PREFIX:], np.array(ok), GROUPS, CI_TARGET,
            *((qkv[layer], H) if site == "attn_in" else ()))
        for site in ("attn_in", "resid") for layer in range(L)
    }
    return dict(rid=rid, store=store, acts=acts, qkv=qkv, bias=bias, ok=ok, pos_embed=pos_embed,
                check=check, tables=tables, jackknife=jackknife)


def expected_layers(p) -> pd.DataFrame:
    ok = np.array(p["ok"])
    rows = []
    for site in ("attn_in", "resid"):
        for layer in range(L):
            x = p["acts"][site][layer][ok][:, PREFIX:].astype(np.float64)
            ref = brute_heads(x, p["qkv"][layer], H)
            controls = brute_controls(x, half_a(ok, SEED), token_permutations(ok, T - 1, SEED))
            row = dict(run_id=p["rid"], model="toy_vit", site=site, layer=layer,
                       ss_total=float(((x - x.mean((0, 1))) ** 2).sum()),
                       frac_pos=ref["frac_pos"], frac_img=ref["frac_img"],
                       frac_int=ref["frac_int"], frac_content=ref["frac_img"] + ref["frac_int"],
                       n_images=len(ok), **controls,
                       pos_embed_cos=np.nan, model_logit_residual=np.nan,
                       model_attn_residual=np.nan, ss_identity_residual=0.0,
                       ortho_residual=0.0,
                       logit_residual=0.0 if site == "attn_in" else np.nan)
            row |= {k: v for k, v in p["jackknife"][site, layer].items()
                    if k.startswith("frac_") or k in LAYER_SAMPLE_SIZE}
            if site == "resid" and layer == 0:
                row["pos_embed_cos"] = brute_pos_embed_cos(x, p["pos_embed"])
            if site == "attn_in":
                c = p["check"]
                row["model_logit_residual"] = brute_model_check(
                    p["acts"][site][layer][ok], c["x"][layer], c["q"][layer], c["k"][layer],
                    c["scale"][layer], p["qkv"][layer], p["bias"][layer], H, PREFIX,
                )["model_logit_residual"]
                row["model_attn_residual"] = c["attn_out_residual"][layer]
            rows.append(row)
    return pd.DataFrame(rows)


def expected_heads_modes(p) -> tuple[pd.DataFrame, pd.DataFrame]:
    ok = np.array(p["ok"])
    heads, modes = [], []
    for layer in range(L):
        x_all = p["acts"]["attn_in"][layer][ok]
        ref = brute_heads(x_all[:, PREFIX:], p["qkv"][layer], H)
        c = p["check"]
        mc = brute_model_check(x_all, c["x"][layer], c["q"][layer], c["k"][layer],
                               c["scale"][layer], p["qkv"][layer], p["bias"][layer], H, PREFIX)
        for h in range(H):
            row = dict(run_id=p["rid"], model="toy_vit", layer=layer, head=h,
                       head_type=ref["head_type"][h], eff_rank=ref["eff_rank"][h],
                       eff_rank_sigma=ref["eff_rank_sigma"][h], k90=ref["k90"][h],
                       mode_coupling=ref["mode_coupling"][h])
            for i, b in enumerate(("pp", "pc", "cp", "cc")):
                row[f"e_{b}"], row[f"f_{b}"] = ref["energy"][h, i], ref["frac"][h, i]
            for name in ("bias_key_share", "bias_key_pos_share", "bias_key_con_share"):
                row[name] = mc[name][h]
            jk = p["jackknife"]["attn_in", layer]
            row |= {k: v[h] for k, v in jk.items()
                    if k.startswith("f_") or k == "head_type_stability"}
            for i, b in enumerate(("pp", "pc", "cp", "cc")):
                row[f"e_{b}_adj"] = jk["energy_adj"][h, i]
            heads.append(row)
            for m in range(D // H):
                mrow = dict(run_id=p["rid"], model="toy_vit", layer=layer, head=h, mode=m,
                            sigma=ref["sigma"][h, m], alpha=ref["alpha"][h, m],
                            beta=ref["beta"][h, m], mode_type=ref["mode_type"][h][m])
                for i, b in enumerate(("pp", "pc", "cp", "cc")):
                    mrow[f"e_{b}"] = ref["mode_energy"][h, m, i]
                modes.append(mrow)
    return pd.DataFrame(heads), pd.DataFrame(modes)


def compare(table: str, got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Every contract column of ``table``, row by row on its keys."""
    keys = list(KEYS[table])
    unchecked = set(TABLE_SCHEMAS[table].names) - set(want.columns)
    assert not unchecked, f"{table}: columns without a brute-force check: {sorted(unchecked)}"
    got = got.sort_values(keys).reset_index(drop=True)
    want = want.sort_values(keys).reset_index(drop=True)
    assert len(got) == len(want), table
    for name in TABLE_SCHEMAS[table].names:
        g = got[name].to_numpy()
        if name in ROUNDING:  # want holds 0 where defined, NaN where not
            w = want[name].to_numpy(dtype=float)
            assert np.array_equal(np.isnan(g.astype(float)), np.isnan(w)), name
            assert np.all(g[~np.isnan(w)] < ROUNDING[name]), name
        elif name == "mode_coupling":  # near zero: its complement carries the precision
            np.testing.assert_allclose(1 - g, 1 - want[name], rtol=RTOL, err_msg=name)
        elif g.dtype.kind in "fc":
            w = want[name].to_numpy(dtype=float)
            assert np.array_equal(np.isnan(g.astype(float)), np.isnan(w)), name
            rtol = (RTOL_FLOAT64 if table == "layers" and (name.startswith("frac_")
                                                           or name in STAGE1) else RTOL)
            # an interval end θ ∓ t·se carries the errors of θ and se, on the scale of the
            # share (at most 1), not of the end, which may lie near 0
            atol = rtol if name.endswith(("_lo", "_hi")) else 0.0
            np.testing.assert_allclose(g.astype(float), w, rtol=rtol, atol=atol, err_msg=name)
        else:
            assert [str(v) for v in g] == [str(v) for v in want[name]], name


def test_layers_columns(published):
    compare("layers", published["tables"]["layers"], expected_layers(published))


def test_heads_and_modes_columns(published):
    heads, modes = expected_heads_modes(published)
    compare("heads", published["tables"]["heads"], heads)
    compare("modes", published["tables"]["modes"], modes)


def test_planted_checks_are_not_trivial(published):
    """The planted values keep every column apart from its neighbours: a test that compares
    equal columns could not see one overwritten by the other."""
    layers = published["tables"]["layers"]
    row = layers[(layers.site == "resid") & (layers.layer == 0)].iloc[0]
    assert 0.3 < row.pos_embed_cos < 0.99
    attn = layers[layers.site == "attn_in"]
    assert (attn.model_logit_residual > 1e-4).all() and (attn.model_logit_residual < 1e-1).all()
    heads = published["tables"]["heads"]
    assert (heads.bias_key_share > 1e-3).all()
    assert not np.allclose(heads.bias_key_pos_share, heads.bias_key_con_share)
    modes = published["tables"]["modes"]
    assert not np.allclose(modes.alpha, modes.beta)
    # a head whose type some replicates change, and heads that decide ci_halfwidth
    assert ((heads.head_type_stability > 0) & (heads.head_type_stability < 1)).any()
    assert (attn.ci_halfwidth > attn.frac_pos_adj_hi - attn.frac_pos_adj + 1e-3).any()
    resid = layers[layers.site == "resid"]
    np.testing.assert_allclose(resid.ci_halfwidth, resid.frac_pos_adj_hi - resid.frac_pos_adj)


def test_pos_embed_cos_with_the_prefix_included_is_over_the_patch_positions(published):
    """Decomposed with --prefix include, pos_embed_cos is the cosine over the patch positions,
    as with the prefix excluded (pos's patch rows centred again are the excluded run's pos):
    it was NULL, and the check the README asks for before reading a positional share lost."""
    p = published
    ok = np.array(p["ok"])
    part = decompose_site_layer(str(p["store"].root), p["rid"], "resid", 0,
                                DecomposeOptions(prefix="include", seed=SEED,
                                                 jackknife_groups=GROUPS, ci_target=CI_TARGET))
    x = p["acts"]["resid"][0][ok][:, PREFIX:].astype(np.float64)
    np.testing.assert_allclose(float(part["pos_embed_cos"].values.squeeze()),
                               brute_pos_embed_cos(x, p["pos_embed"]), rtol=RTOL)
    assert part.sizes["position"] == T  # the prefix token counted as a position
