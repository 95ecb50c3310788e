-- litejobs schema, version 1. The code sets PRAGMA application_id and
-- PRAGMA user_version after running this file, in the same transaction.

-- One row per message of every queue. Times are integer UTC milliseconds.
-- A message is
--   dead       when dead_at is set, or it was received max_receive times and its
--              last lease has run out (the next claim or sweep sets dead_at);
--   visible    when not dead and timeout <= now;
--   in flight  when not dead, leased and timeout > now;
--   delayed    when not dead, not leased and timeout > now.
-- fence counts receives, nacks, dead-letterings and redrives: a receipt is
-- "id:fence", so a receipt goes stale the moment any of those happen. AUTOINCREMENT keeps
-- ids from being reused, so an old receipt can never name a newer message.
CREATE TABLE messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT NOT NULL,
    body        TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    created     INTEGER NOT NULL,
    timeout     INTEGER NOT NULL,
    received    INTEGER NOT NULL DEFAULT 0,
    max_receive INTEGER NOT NULL CHECK (max_receive >= 1),
    fence       INTEGER NOT NULL DEFAULT 0,
    leased      INTEGER NOT NULL DEFAULT 0 CHECK (leased IN (0, 1)),
    dead_at     INTEGER
) STRICT;

-- The claim: highest priority first, then oldest (id breaks ties in send order).
CREATE INDEX messages_claim ON messages (queue, priority DESC, created) WHERE dead_at IS NULL;
-- There is deliberately no index for the sweep of exhausted messages: one whose
-- key or condition holds received or timeout is updated by every claim, and was
-- measured at about 30 % of the claim's cost. The sweep runs only when a claim
-- comes back short, and walks messages_claim instead.

-- Jobs. A job without parent_id is a parent: its status follows its children
-- and its tolerance columns decide what child failures do to it. message_id is
-- the job's queue message while it has one, NULL once the job is terminal.
CREATE TABLE jobs (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    parent_id          INTEGER REFERENCES jobs (id) ON DELETE CASCADE,
    kind               TEXT NOT NULL,
    status             TEXT NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    payload            TEXT NOT NULL,
    result             TEXT,
    error              TEXT,
    warning            TEXT,
    attempts           INTEGER NOT NULL DEFAULT 0,
    message_id         INTEGER,
    key                TEXT,
    max_child_failures INTEGER NOT NULL DEFAULT 0 CHECK (max_child_failures >= 0),
    on_failure         TEXT NOT NULL DEFAULT 'continue'
        CHECK (on_failure IN ('stop_all', 'continue', 'mark_warning')),
    created_at         INTEGER NOT NULL,
    started_at         INTEGER,
    completed_at       INTEGER
) STRICT;

CREATE INDEX jobs_children ON jobs (parent_id, status) WHERE parent_id IS NOT NULL;
CREATE INDEX jobs_message ON jobs (message_id) WHERE message_id IS NOT NULL;

-- A child's optional key is unique under its parent: spawning a key the parent
-- has seen is a no-op (a crawl's seen-URL set, kept with the children).
CREATE UNIQUE INDEX jobs_key ON jobs (parent_id, key) WHERE key IS NOT NULL;

-- Belt and braces under the Python checks: a terminal status is final.
CREATE TRIGGER jobs_terminal_is_final
BEFORE UPDATE OF status ON jobs
WHEN OLD.status IN ('completed', 'failed', 'cancelled') AND NEW.status IS NOT OLD.status
BEGIN
    SELECT RAISE(ABORT, 'litejobs: a terminal job status is final');
END;
