-- Lineage walk: every ancestor of (start_step, start_id) back to its source rows.
-- Inputs: dm.edges, dm.steps. Grain: one row per ancestor node (step, sample_id)
-- with depth (0 = the sample itself) and via_step (the step that made the link
-- to the node one level down).
-- A pass-through step (filter, dedup) writes no edges: its row IS its parent's
-- row, so the walk steps to the parent step with the same sample_id. So does a
-- keeps_ids step (export): its rows are stored, but each keeps its parent's id.
CREATE OR REPLACE MACRO dm.lineage(start_step, start_id) AS TABLE
WITH RECURSIVE walk(step, sample_id, depth, via_step) AS (
    SELECT start_step, start_id, 0, CAST(NULL AS VARCHAR)
    UNION ALL
    SELECT coalesce(e.parent_step, json_extract_string(s.parents, '$.input')),
           coalesce(e.parent_id, w.sample_id),
           w.depth + 1,
           w.step
    FROM walk w
    JOIN dm.steps s ON s.name = w.step
    LEFT JOIN dm.edges e
           ON NOT (s.passthrough OR coalesce(s.keeps_ids, false)) AND e.step = w.step AND e.sample_id = w.sample_id
    WHERE ((s.passthrough OR coalesce(s.keeps_ids, false)) AND json_extract_string(s.parents, '$.input') IS NOT NULL)
       OR e.parent_id IS NOT NULL
)
SELECT DISTINCT step, sample_id, depth, via_step FROM walk ORDER BY depth, step, sample_id;
