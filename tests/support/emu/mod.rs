//! The emulator kit: what every service emulator in `tests/` needs, written once, so that
//! an emulator file holds only its service's semantics.
//!
//! - [`server`]: an HTTP/1.1 server on loopback (hyper) that hands each request, body
//!   read, to the emulator's handler, keeps a request log for assertions, and delivers
//!   the handler's [`server::Reply`]: a response, or a fault at the transport level (the
//!   connection closed without a reply, a reply cut after part of its body, a stall);
//! - [`faults`]: a queue of faults a test injects and the emulator serves in order to the
//!   requests they apply to;
//! - [`range`]: the `Range` request header as servers read it (RFC 9110 §14);
//! - [`text`]: random tokens, query maps, JSON responses;
//! - [`oauth`]: an OAuth 2.0 authorization server (code + PKCE, refresh with optional
//!   rotation, device flow, revocation, expiring bearer tokens) with each service's
//!   differences as settings.
//!
//! The Drive emulator and the Nextcloud emulation run on it.
//!
//! Include with `#[path = "support/emu/mod.rs"] mod emu;` at the crate root of a test
//! file that uses an emulator built on it (the Drive emulator included).
#![allow(dead_code)]

pub mod faults;
pub mod oauth;
pub mod range;
pub mod server;
pub mod text;
