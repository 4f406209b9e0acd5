//! The shared provider kit: plumbing every HTTP-speaking provider needs, written once.
//!
//! A provider should be its configuration, its wire types and its `impl Provider`; how a
//! request is retried, paced, paged or authorized lives here (see
//! `/work/shared/design/README.md`, "A provider seam").
//!
//! - `client`: one HTTP client per connection — settings, credentials, rate cap, retries,
//!   and replies turned into errors by the service's rules;
//! - `auth`: credentials (none, basic, fixed bearer, OAuth with one refresh after a 401);
//! - `errors`: status + headers + the service's error body → `ProviderError`;
//! - `retry`: which outcomes are certain, backoff with `Retry-After`, per-request retries;
//! - `ranged`: the `Range` header, reading 206/200/416 replies, cutting the byte window;
//! - `idcache`: paths <-> ids for id-addressed services (listings, moves, the change feed);
//! - `names`: reversible local names (escaping, numbering of duplicate names);
//! - `paging`: the list loop over next-page markers (token, next link, cursor, `Link`
//!   header, offset with a total);
//! - `drive_set`: several drives of one account side by side under one connection, with
//!   the folders above them kept fixed;
//! - `upload_session`: the loop through a resumable upload session (resume, restart);
//! - `relist`: a change feed for services without one (look again at the folders the
//!   mount has listed, report the differences).

pub mod auth;
pub mod client;
pub mod drive_set;
pub mod errors;
pub mod idcache;
pub mod names;
pub mod paging;
pub mod ranged;
pub mod relist;
pub mod retry;
pub mod upload_session;
