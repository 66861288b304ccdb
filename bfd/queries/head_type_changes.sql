-- head_type_changes: the heads whose stored head_type differs between two runs (any two run
-- ids: two checkpoints of one training run, a model and its fine-tune), with both types and
-- both runs' head fractions. Heads only one run holds are left out. Heads are paired by index
-- (layer, head): across two seeds or independent trainings of one architecture head k of one is
-- unrelated to head k of the other (heads are exchangeable), so their changes mean nothing there.
-- Head types come from the raw fractions, whose chance level (≈ frac_int/(N-1)) moves with N:
-- runs of other N (n_images - n_skipped) differ in type without any head changing (a head near
-- a type boundary; head_type_stability does not cover this bias). Shares only: a head whose
-- logit energy grew many-fold keeps its type (head_energy_changes). same_model and note: the
-- pair's in run_pairs: the types of two models' heads l, h (note says so), or of shares over
-- other positions or other images, differ without any head changing.
-- params: run_a (required), run_b (required)
WITH pair AS (
    SELECT same_model, note FROM run_pairs WHERE run_a = $run_a AND run_b = $run_b
)
SELECT
    a.layer,
    a.head,
    a.head_type AS head_type_a,
    b.head_type AS head_type_b,
    a.f_pp AS f_pp_a,
    b.f_pp AS f_pp_b,
    a.f_pc AS f_pc_a,
    b.f_pc AS f_pc_b,
    a.f_cp AS f_cp_a,
    b.f_cp AS f_cp_b,
    a.f_cc AS f_cc_a,
    b.f_cc AS f_cc_b,
    a.run_id AS run_a,
    b.run_id AS run_b,
    pair.same_model,
    pair.note
FROM heads AS a
JOIN heads AS b ON a.layer = b.layer AND a.head = b.head
LEFT JOIN pair ON true
WHERE a.run_id = $run_a AND b.run_id = $run_b AND a.head_type IS DISTINCT FROM b.head_type
ORDER BY a.layer, a.head
