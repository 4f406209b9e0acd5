//! The shared provider kit: plumbing every HTTP-speaking provider needs, written once.
//!
//! A provider should be its configuration, its wire types and its `impl Provider`; how a
//! request is retried, paced, paged or authorized lives here (see
//! `/work/shared/design/README.md`, "A provider seam").
//!
//! - `retry`: which outcomes are certain, backoff with `Retry-After`, per-request retries;
//! - `ranged`: the `Range` header, reading 206/200/416 replies, cutting the byte window;
//! - `paging`: the list loop over next-page markers (token, next link, cursor).

pub mod paging;
pub mod ranged;
pub mod retry;
