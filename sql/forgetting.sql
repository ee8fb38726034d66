-- Forgetting and domain gain: what fine-tuning did to each evaluated model, from dm.metrics.
-- Inputs: dm.metrics (sql/metrics.sql), dm.steps (an evaluate step's config names its
-- `baseline`, default the first of `models`, and its optional `no_replay` arm).
--
-- dm.metric_changes, grain: evaluate step x model (not the baseline) x set x metric.
--   change = value - the baseline's value on the same set and metric; change_stderr
--   treats the two values as independent (conservative: they share the examples);
--   improvement = change signed so that positive is better (nll: baseline - model).
--
-- dm.forgetting, grain: evaluate step x model (an arm, not the baseline) x metric.
--   forgetting F  = loss of general performance vs the baseline, averaged over the
--                   role = 'general' sets (nll: arm - base; positive = forgot);
--   domain_gain G = gain on the role = 'domain' sets (nll: base - arm; positive = learned);
--   against the step's no_replay arm (the same metric): forgetting_removed =
--   1 - F / F_no_replay and domain_gain_kept = G / G_no_replay (NULL when the no-replay
--   arm has no forgetting or no gain to compare with, or no no_replay is named).
--   *_stderr: standard errors of F and G under the same independence assumption.
CREATE OR REPLACE VIEW dm.metric_changes AS
WITH steps AS (
    SELECT name AS step,
           coalesce(json_extract_string(config, '$.baseline'), json_extract_string(config, '$.models[0]')) AS baseline
    FROM dm.steps WHERE kind = 'evaluate'
)
SELECT m.step, m.model, s.baseline, m."set", m.role, m.metric, m.value, b.value AS baseline_value,
       m.value - b.value AS change,
       sqrt(coalesce(m.stderr, 0) ^ 2 + coalesce(b.stderr, 0) ^ 2) AS change_stderr,
       CASE WHEN m.higher_is_better THEN m.value - b.value ELSE b.value - m.value END AS improvement,
       m.n
FROM dm.metrics m
JOIN steps s ON s.step = m.step
JOIN dm.metrics b ON b.step = m.step AND b.model = s.baseline AND b."set" = m."set" AND b.metric = m.metric
WHERE m.model <> s.baseline;

CREATE OR REPLACE VIEW dm.forgetting AS
WITH steps AS (
    SELECT name AS step, json_extract_string(config, '$.no_replay') AS no_replay FROM dm.steps WHERE kind = 'evaluate'
), arms AS (
    SELECT step, model, baseline, metric,
           avg(-improvement) FILTER (WHERE role = 'general') AS forgetting,
           sqrt(sum(change_stderr ^ 2) FILTER (WHERE role = 'general'))
               / count(*) FILTER (WHERE role = 'general') AS forgetting_stderr,
           avg(improvement) FILTER (WHERE role = 'domain') AS domain_gain,
           sqrt(sum(change_stderr ^ 2) FILTER (WHERE role = 'domain'))
               / count(*) FILTER (WHERE role = 'domain') AS domain_gain_stderr,
           count(*) FILTER (WHERE role = 'general') AS general_sets,
           count(*) FILTER (WHERE role = 'domain') AS domain_sets
    FROM dm.metric_changes
    WHERE role IN ('general', 'domain')
    GROUP BY ALL
)
SELECT a.step, a.model, a.baseline, s.no_replay, a.metric,
       a.forgetting, a.forgetting_stderr, a.domain_gain, a.domain_gain_stderr,
       1 - a.forgetting / nullif(r.forgetting, 0) AS forgetting_removed,
       a.domain_gain / nullif(r.domain_gain, 0) AS domain_gain_kept,
       a.general_sets, a.domain_sets
FROM arms a
JOIN steps s USING (step)
LEFT JOIN arms r ON r.step = a.step AND r.model = s.no_replay AND r.metric = a.metric
ORDER BY a.step, a.metric, a.model;
