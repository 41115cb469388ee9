-- Migration 8: reserved for branch 'lifecycle' (channels, retention), which
-- takes number 8 while 'idempotency' takes 9.  This placeholder only keeps
-- the numbers 1..N contiguous on a branch without it: DELETE THIS FILE when
-- merging the real 008 (migrations() refuses two files numbered 8).
SELECT 1;
