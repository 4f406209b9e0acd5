//! IMAP mail as read-only folders (issue 12) — under construction. So far: what messages
//! and mailboxes are called in the mount (`names`). The provider, its connection pool
//! (`async-imap`), listing by `EXAMINE` + `UID FETCH`, ranged reads with `BODY.PEEK[]`,
//! attachments and IDLE come next; the tests run against a real Dovecot
//! (`tests/support/dovecot.rs`).

pub mod names;
