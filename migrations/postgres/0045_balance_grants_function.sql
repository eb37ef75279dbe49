-- The blocks a team's balance lists (credits left or held), soonest-expiring first (the
-- order they are spent in), as one JSON array. `GET /api/credits/balance` reads the
-- balance row and calls this only when the grants it remembers are not those of the
-- row's current version (`CASE WHEN xmin = … THEN NULL ELSE balance_grants_json(…)`):
-- a function call is planned only when it runs, so a balance whose grants are
-- remembered costs PostgreSQL a point select (an inline subquery is set up on every
-- execution, run or not). PL/pgSQL keeps the statement's plan for the session.
-- STABLE: the statement reads with the calling query's snapshot, so the grants belong to
-- the very balance row the caller reads.
CREATE FUNCTION balance_grants_json(team text) RETURNS json
    LANGUAGE plpgsql STABLE
AS $$
DECLARE
    grants json;
BEGIN
    SELECT COALESCE(json_agg(json_build_object('grant_id', g.grant_id, 'origin', g.origin, 'amount', g.amount,
               'remaining', g.remaining, 'reserved', g.reserved, 'deducted', g.deducted, 'expired', g.expired,
               'expires_at', g.expires_at, 'granted_at', g.granted_at)
             ORDER BY g.expires_at IS NULL, g.expires_at, g.granted_at, g.grant_id), '[]'::json)
      INTO grants
      FROM credit_grants g
     WHERE g.team_id = team AND (g.remaining > 0 OR g.reserved > 0);
    RETURN grants;
END;
$$;
