-- A job's row is updated several times in its life (dispatched, running, ended, images
-- expired). Room left in each page lets PostgreSQL update a row in place (a HOT update)
-- when no indexed column changes, as with `images_expired`: no new entries in the five
-- indexes of the table. Applies to pages written from now on.
ALTER TABLE jobs SET (fillfactor = 80);
