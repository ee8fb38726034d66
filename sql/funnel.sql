-- Funnel: per step, rows in and out and rows dropped per reason.
-- Inputs: dm.steps, dm.decisions. Grain: one row per (step, reason); reason is
-- NULL on the step's summary row.
CREATE OR REPLACE VIEW dm.funnel AS
SELECT s.name AS step, s.kind, s.state, s.rows_in, s.rows_out,
       d.reason, d.dropped
FROM dm.steps s
LEFT JOIN (
    SELECT step, reason, count(*) AS dropped
    FROM dm.decisions WHERE NOT kept
    GROUP BY ALL
) d ON d.step = s.name
ORDER BY s.started_at NULLS LAST, s.name, d.dropped DESC;
