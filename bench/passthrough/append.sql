-- Event-store append (pgbench custom script), the write path of DESIGN.md:
-- probe the aggregate's current version, append the next event, return its
-- global_position. Each pgbench client appends to its own 1,000 aggregates
-- (ids derived from :client_id), so versions never conflict between clients.
\set a random(1, 1000)
\set n :client_id * 1000000 + :a
\set t :n % 64
BEGIN;
SELECT COALESCE(MAX(version), 0) AS v FROM events WHERE aggregate_id = md5(:n::text)::uuid AND aggregate_type = 'Order' \gset
\set nv :v + 1
INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, actor_id, version, timestamp, payload) VALUES (gen_random_uuid(), md5(:n::text)::uuid, 'Order', 'Created', md5(:t::text)::uuid, 'bench', :nv, now(), '{}') RETURNING global_position;
COMMIT;
