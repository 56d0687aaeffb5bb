-- jobpool schema, version 8: the same name checks on jobs, at a fraction of their cost.
--
-- A bounded repetition in a regular expression (`{0,127}`) makes PostgreSQL's matcher
-- walk a large automaton on every row: the job type's check cost about 2.5 µs of a
-- submitted job's ~11 µs of server CPU, the pool name's about 0.5 µs. An unbounded
-- repetition plus a length bound accepts exactly the same names (the first character
-- and the allowed characters are unchanged; the length bound is the one the repetition
-- implied: 128 characters for a type, 50 for a pool) and costs a tenth.

SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true);

ALTER TABLE jobs
    DROP CONSTRAINT jobs_type_valid,
    ADD CONSTRAINT jobs_type_valid
        CHECK (type ~ '^[A-Za-z][A-Za-z0-9_.:-]*$' AND char_length(type) <= 128),
    DROP CONSTRAINT jobs_pool_valid,
    ADD CONSTRAINT jobs_pool_valid
        CHECK (pool ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' AND char_length(pool) <= 50);
