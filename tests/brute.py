"""Literal brute-force BFD for the tests: explicit T x T logit blocks, dense float64 SVD of
each d x d M_h, loops where docs/method.md writes sums. Slow on purpose and independent of
bfd.core (it imports nothing from bfd; the t quantile is scipy's)."""

from __future__ import annotations

import numpy as np
from scipy.stats import t as student_t

BLOCKS = ("pp", "pc", "cp", "cc")


def brute_stage1(x: np.ndarray) -> dict:
    x = np.asarray(x, dtype=np.float64)
    N, T, _ = x.shape
    mu = x.mean(axis=(0, 1))
    pos = x.mean(axis=0) - mu
    c = x - mu - pos
    img = x.mean(axis=1) - mu
    r = c - img[:, None, :]
    ss_total = float(((x - mu) ** 2).sum())
    ss_pos = N * float((pos**2).sum())
    ss_img = T * float((img**2).sum())
    ss_int = float((r**2).sum())
    return dict(mu=mu, pos=pos, c=c, ss_total=ss_total, ss_pos=ss_pos, ss_img=ss_img,
                ss_int=ss_int, frac_pos=ss_pos / ss_total, frac_img=ss_img / ss_total,
                frac_int=ss_int / ss_total)


def head_type(f: np.ndarray) -> str:
    classes = {"content-content": f[3], "content-position": f[1] + f[2],
               "position-position": f[0]}
    return max(classes, key=classes.get)


def brute_heads(x: np.ndarray, W: np.ndarray, H: int, scale: float | None = None,
                explicit_modes: bool = True) -> dict:
    s1 = brute_stage1(x)
    pos, c = s1["pos"], s1["c"]
    N, T, d = c.shape
    W = np.asarray(W, dtype=np.float64)
    d_attn = W.shape[0] // 3
    dh = d_attn // H
    s = dh**-0.5 if scale is None else scale
    out = {k: [] for k in ("energy", "sigma", "alpha", "beta", "mode_energy", "mode_type",
                           "head_type", "mode_coupling", "eff_rank", "eff_rank_sigma", "k90")}
    for h in range(H):
        A = W[h * dh:(h + 1) * dh].T
        B = W[d_attn + h * dh:d_attn + (h + 1) * dh].T
        M = s * A @ B.T
        E = dict(pp=N * np.sum((pos @ M @ pos.T) ** 2), pc=0.0, cp=0.0, cc=0.0)
        for n in range(N):
            E["pc"] += np.sum((pos @ M @ c[n].T) ** 2)
            E["cp"] += np.sum((c[n] @ M @ pos.T) ** 2)
            E["cc"] += np.sum((c[n] @ M @ c[n].T) ** 2)
        energy = np.array([E[b] for b in BLOCKS])
        out["head_type"].append(head_type(energy / energy.sum()))

        Ud, S, Vt = np.linalg.svd(M)
        U, V, S = Ud[:, :dh], Vt[:dh].T, S[:dh]
        for k in range(dh):
            if U[np.argmax(np.abs(U[:, k])), k] < 0:
                U[:, k] *= -1
                V[:, k] *= -1
        alpha, beta, me = [], [], []
        for k in range(dh):
            u, v, sk = U[:, k], V[:, k], S[k]
            qpos = N * sum((u @ pos[t]) ** 2 for t in range(T))
            qcon = float(((c @ u) ** 2).sum())
            kpos = N * sum((v @ pos[t]) ** 2 for t in range(T))
            kcon = float(((c @ v) ** 2).sum())
            alpha.append(qpos / (qpos + qcon))
            beta.append(kpos / (kpos + kcon))
            if explicit_modes:
                Pu, Pv = pos @ u, pos @ v
                e = dict(pp=N * np.sum((sk * np.outer(Pu, Pv)) ** 2), pc=0.0, cp=0.0, cc=0.0)
                for n in range(N):
                    Cu, Cv = c[n] @ u, c[n] @ v
                    e["pc"] += np.sum((sk * np.outer(Pu, Cv)) ** 2)
                    e["cp"] += np.sum((sk * np.outer(Cu, Pv)) ** 2)
                    e["cc"] += np.sum((sk * np.outer(Cu, Cv)) ** 2)
            else:
                su, sv = np.sum((pos @ u) ** 2), np.sum((pos @ v) ** 2)
                e = dict(pp=sk**2 * N * su * sv, pc=sk**2 * su * kcon, cp=sk**2 * qcon * sv,
                         cc=sk**2 * sum(np.sum((c[n] @ u) ** 2) * np.sum((c[n] @ v) ** 2)
                                        for n in range(N)))
            me.append([e[b] for b in BLOCKS])
        me = np.array(me)
        out["mode_type"].append([BLOCKS[i] for i in me.argmax(1)])
        out["mode_coupling"].append(1 - me.sum() / energy.sum())
        p = me.sum(1) / me.sum()
        out["eff_rank"].append(np.exp(-sum(pk * np.log(pk) for pk in p if pk > 0)))
        ps = S**2 / np.sum(S**2)
        out["eff_rank_sigma"].append(np.exp(-sum(pk * np.log(pk) for pk in ps if pk > 0)))
        acc, k90 = 0.0, 0
        for pk in sorted(p, reverse=True):
            acc += pk
            k90 += 1
            if acc >= 0.9 - 1e-12:
                break
        out["k90"].append(k90)
        out["energy"].append(energy)
        out["sigma"].append(S)
        out["alpha"].append(alpha)
        out["beta"].append(beta)
        out["mode_energy"].append(me)
    res = {k: np.array(v) for k, v in out.items()}
    res["frac"] = res["energy"] / res["energy"].sum(1, keepdims=True)
    res.update({k: s1[k] for k in ("mu", "pos", "frac_pos", "frac_img", "frac_int")})
    return res


def brute_controls(x: np.ndarray, in_half_a: np.ndarray, perms: np.ndarray) -> dict:
    """Split-half r of pos and the shuffle control's frac_pos, given the halves and the
    per-image token permutations (x'[n, perms[n, t]] = x[n, t]) as inputs."""
    x = np.asarray(x, dtype=np.float64)
    N, T, _ = x.shape

    def positional(xs):
        m = xs.mean(axis=0)
        return m - m.mean(axis=0)

    a = positional(x[in_half_a]).ravel()
    b = positional(x[~in_half_a]).ravel()
    a, b = a - a.mean(), b - b.mean()
    shuffled = np.empty_like(x)
    for n in range(N):
        for t in range(T):
            shuffled[n, perms[n, t]] = x[n, t]
    ss_total = float(((x - x.mean(axis=(0, 1))) ** 2).sum())
    return dict(pos_split_half_r=float(a @ b / np.sqrt((a @ a) * (b @ b))),
                shuffle_frac_pos=N * float((positional(shuffled) ** 2).sum()) / ss_total)


def brute_pos_embed_cos(resid0: np.ndarray, pos_embed: np.ndarray) -> float:
    """Cosine between pos of the resid site of block 0 (patch tokens, (N, T, d)) and the
    mean-centred pos_embed patch rows."""
    r = np.asarray(resid0, dtype=np.float64)
    pos = r.mean(axis=0) - r.mean(axis=(0, 1))
    pe = np.asarray(pos_embed, dtype=np.float64)
    pe = pe - pe.mean(axis=0)
    return float((pos * pe).sum() / (np.linalg.norm(pos) * np.linalg.norm(pe)))


def brute_model_check(x_all: np.ndarray, x_check: np.ndarray, q: np.ndarray, k: np.ndarray,
                      model_scale: float, W: np.ndarray, b: np.ndarray, H: int,
                      prefix_tokens: int) -> dict:
    """The logit check and key-side bias shares, literally: x_all (N, T_total, d) gives mu and
    pos (patch tokens); x_check (K, T_total, d) with the model's q, k (K, H, T_total, dh)."""
    W, b = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)
    p = np.asarray(x_all, dtype=np.float64)[:, prefix_tokens:]
    mu = p.mean(axis=(0, 1))
    pos = p.mean(axis=0) - mu
    d_attn = W.shape[0] // 3
    dh = d_attn // H
    s = dh**-0.5
    residual, share, share_pos, share_con = [], [], [], []
    for h in range(H):
        Wq, Wk = W[h * dh:(h + 1) * dh], W[d_attn + h * dh:d_attn + (h + 1) * dh]
        bq, bk = b[h * dh:(h + 1) * dh], b[d_attn + h * dh:d_attn + (h + 1) * dh]
        num = den = total = e = e_pos = e_con = 0.0
        for n, x in enumerate(np.asarray(x_check, dtype=np.float64)):
            L = model_scale * q[n, h].astype(np.float64) @ k[n, h].astype(np.float64).T
            ours = np.array([[s * (Wq @ xi + bq) @ (Wk @ xj + bk) for xj in x] for xi in x])
            bil = np.array([[s * (Wq @ xi) @ (Wk @ xj) for xj in x] for xi in x])
            num += ((L - ours) ** 2).sum()
            den += (bil**2).sum()
            Lp = L[prefix_tokens:, prefix_tokens:]
            total += ((Lp - Lp.mean(axis=1, keepdims=True)) ** 2).sum()
            xs = x[prefix_tokens:]
            T = len(xs)
            kappa = np.array([s * bq @ (Wk @ xj) for xj in xs])
            kp = np.array([s * bq @ (Wk @ pt) for pt in pos])
            kc = np.array([s * bq @ (Wk @ (xj - mu - pt)) for xj, pt in zip(xs, pos,
                                                                           strict=True)])
            e += T * ((kappa - kappa.mean()) ** 2).sum()
            e_pos += T * ((kp - kp.mean()) ** 2).sum()
            e_con += T * ((kc - kc.mean()) ** 2).sum()
        residual.append(np.sqrt(num / den))
        share.append(e / total)
        share_pos.append(e_pos / total)
        share_con.append(e_con / total)
    return dict(model_logit_residual=max(residual), bias_key_share=np.array(share),
                bias_key_pos_share=np.array(share_pos), bias_key_con_share=np.array(share_con))


def brute_shares(x: np.ndarray) -> dict:
    """Raw and chance-corrected Stage 1 shares and the chance level of frac_pos, from the sums
    of squares as docs/method.md ("Chance-corrected shares") writes them."""
    s = brute_stage1(x)
    N, T, _ = np.shape(x)
    v_int = s["ss_int"] / ((N - 1) * T)
    v_pos = (s["ss_pos"] - s["ss_int"] / (N - 1)) / (N * T)
    v_img = s["ss_img"] / ((N - 1) * T)
    v = v_pos + v_img + v_int
    return dict(frac_pos=s["frac_pos"], frac_img=s["frac_img"], frac_int=s["frac_int"],
                frac_content=s["frac_img"] + s["frac_int"], frac_pos_adj=v_pos / v,
                frac_img_adj=v_img / v, frac_int_adj=v_int / v, frac_content_adj=1 - v_pos / v,
                frac_pos_chance=s["ss_int"] / ((N - 1) * s["ss_total"]))


def _inner(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum())


def brute_energies(x: np.ndarray, index: np.ndarray, W: np.ndarray, H: int,
                   content_cc: np.ndarray | None = None,
                   cc_shift: np.ndarray | None = None) -> dict:
    """Raw and corrected block energies ``(H, 4)`` of the images ``x`` (global indices
    ``index``) from explicit T x T logit blocks and each quarter's own position means.

    With ``Y_a = P_a U``, ``Σ_ij σ_i σ_j (Y_aᵀY_b)[i, j] (Z_cᵀZ_d)[i, j]`` (``Z = P V``) is the
    block product ``<P_a M P_cᵀ, P_b M P_dᵀ>``, so the docs' Gram formulas read here as products
    of logit blocks; symmetrising both Grams averages the two ways of pairing the key quarters.
    ``content_cc``: the content whose ``E_cc`` is taken (default: this sample's own);
    ``cc_shift``: with it, ``E_cc`` of ``content_cc + cc_shift`` (a jackknife replicate's
    content re-centred), less the terms docs/method.md ("Uncertainty") leaves out, in logit
    form ``2 <C M Cᵀ, S M Sᵀ> + 2 <C M Sᵀ, S M Cᵀ>`` (S the shift).
    """
    s1 = brute_stage1(x)
    pos, c = s1["pos"], s1["c"]
    cc = c if content_cc is None else content_cc
    N = len(x)
    quarters = [np.asarray(x, dtype=np.float64)[np.asarray(index) % 4 == q] for q in range(4)]
    assert all(len(q) for q in quarters), "every quarter needs an image"
    P = [q.mean(axis=0) - q.mean(axis=(0, 1)) for q in quarters]
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    splits = (((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2)))
    W = np.asarray(W, dtype=np.float64)
    d_attn = W.shape[0] // 3
    dh = d_attn // H
    raw, adj = [], []
    for h in range(H):
        M = dh**-0.5 * W[h * dh:(h + 1) * dh].T @ W[d_attn + h * dh:d_attn + (h + 1) * dh]
        if cc_shift is None:
            e_cc = sum(np.sum((cc[n] @ M @ cc[n].T) ** 2) for n in range(N))
        else:
            S = cc_shift
            e_cc = sum(np.sum(((cc[n] + S) @ M @ (cc[n] + S).T) ** 2)
                       - 2 * _inner(cc[n] @ M @ cc[n].T, S @ M @ S.T)
                       - 2 * _inner(cc[n] @ M @ S.T, S @ M @ cc[n].T) for n in range(N))
        raw.append([N * np.sum((pos @ M @ pos.T) ** 2),
                    sum(np.sum((pos @ M @ c[n].T) ** 2) for n in range(N)),
                    sum(np.sum((c[n] @ M @ pos.T) ** 2) for n in range(N)), e_cc])
        pc = np.mean([sum(_inner(P[a] @ M @ c[n].T, P[b] @ M @ c[n].T) for n in range(N))
                      for a, b in pairs])
        cp = np.mean([sum(_inner(c[n] @ M @ P[a].T, c[n] @ M @ P[b].T) for n in range(N))
                      for a, b in pairs])
        pp = []
        for (a, b), (e, f) in splits:
            for (i, j), (k, m) in (((a, b), (e, f)), ((e, f), (a, b))):
                pp.append(_inner(P[i] @ M @ P[k].T, P[j] @ M @ P[m].T))
                pp.append(_inner(P[i] @ M @ P[m].T, P[j] @ M @ P[k].T))
        adj.append([N * np.mean(pp), N * pc / (N - 1), N * cp / (N - 1),
                    raw[-1][3] * N**2 / (N - 1) ** 2])
    return dict(energy=np.array(raw), energy_adj=np.array(adj))


def brute_jackknife(x: np.ndarray, index: np.ndarray, groups: int, ci_target: float,
                    W: np.ndarray | None = None, H: int = 0) -> dict:
    """The delete-a-group jackknife of docs/method.md ("Uncertainty") by re-running the brute
    force without each group's images, with ``E_cc`` of a replicate re-centred but for the
    terms second order in the shift, as documented. Layer figures as floats; with ``W``
    (attn_in) head figures as ``(H,)`` arrays, ``head_type_stability`` among them."""
    x = np.asarray(x, dtype=np.float64)
    index = np.asarray(index)
    c_full = brute_stage1(x)["c"]

    def estimate(keep: np.ndarray) -> dict:
        est = brute_shares(x[keep])
        if W is not None:
            # the content of the images outside the group moves by D_g / N' (its own means)
            shift = None if keep.all() else c_full[~keep].sum(axis=0) / keep.sum()
            e = brute_energies(x[keep], index[keep], W, H, content_cc=c_full[keep],
                               cc_shift=shift)
            frac = e["energy"] / e["energy"].sum(1, keepdims=True)
            frac_adj = e["energy_adj"] / e["energy_adj"].sum(1, keepdims=True)
            for i, b in enumerate(BLOCKS):
                est[f"f_{b}"], est[f"f_{b}_adj"] = frac[:, i], frac_adj[:, i]
            est["head_type"] = np.array([head_type(f) for f in frac])
            est.update(e)
        return est

    full = estimate(np.ones(len(x), bool))
    reps = [estimate(index % groups != g) for g in range(groups) if np.any(index % groups == g)]
    m = len(reps)
    t = student_t.ppf(0.975, m - 1)
    out = {k: v for k, v in full.items() if k != "head_type"}
    widths = []
    for name in [k for k in full if k.startswith(("frac_", "f_")) and k != "frac_pos_chance"]:
        theta = np.asarray(full[name])
        r = np.array([rep[name] for rep in reps])
        se = np.sqrt((m - 1) / m * ((r - r.mean(axis=0)) ** 2).sum(axis=0))
        out[f"{name}_se"], out[f"{name}_lo"], out[f"{name}_hi"] = se, theta - t * se, theta + t * se
        if name == "frac_pos_adj" or (name.startswith("f_") and name.endswith("_adj")):
            widths.extend(np.ravel(t * se))
    out["ci_halfwidth"] = max(widths)
    out["n_images_for_target"] = float(np.ceil(len(x) * (out["ci_halfwidth"] / ci_target) ** 2))
    out["ci_target"] = ci_target
    if W is not None:
        out["head_type_stability"] = np.mean([rep["head_type"] == full["head_type"]
                                              for rep in reps], axis=0)
    return out
