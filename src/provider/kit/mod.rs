//! The shared provider kit: plumbing every HTTP-speaking provider needs, written once.
//!
//! A provider should be its configuration, its wire types and its `impl Provider`; how a
//! request is retried, paced, paged or authorized lives here (see
//! `/work/shared/design/README.md`, "A provider seam"). Only the retry brick exists so far.

pub mod retry;
